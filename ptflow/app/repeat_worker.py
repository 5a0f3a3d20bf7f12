"""A fresh process that rebuilds a run up to one stage and lets that stage repeat its work
there (``benchmark.repeats``: the timing again, in a process of its own).

    python -m ptflow.app.repeat_worker      (started by a stage through RunContext.rebuild)

The protocol, one JSON line each way, ours marked ``PTFLOW-REPEAT `` on the process's own
stdout (anything a library prints goes to stderr, which the stage keeps as a log):

1. stage -> worker: the job (``RunContext.rebuild.job``: the run's resolved config and group
   choices) plus ``stage`` (the name of the stage to stop before), ``cache_dir``;
2. worker: compiles the same plan, applies the same device settings and seed, runs every stage
   before ``stage`` (the stage cache's entries are hits), and answers ``{"ready": true,
   "build_s": ...}``;
3. stage -> worker: ``go`` when it is this worker's turn (workers build in parallel, the stage
   lets one work at a time); end of input instead: the worker exits, having done nothing;
4. worker: ``{"result": stage.repeat(artifact, ctx)}``, or ``{"error": ...}`` at any step.

The config comes from the parent process over a pipe: it is the run's own, already checked
and already run once; nothing here reads a file or a store the run did not.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

MARK = "PTFLOW-REPEAT "


def _say(out: TextIO, message: dict[str, Any]) -> None:
    out.write(MARK + json.dumps(message) + "\n")
    out.flush()


def _warn(key: str, message: str) -> None:
    print(f"ptflow repeat worker: warning: {message}", file=sys.stderr, flush=True)


def serve(job: dict[str, Any], out: TextIO, commands: TextIO) -> int:
    """Rebuild, report ready, wait for the turn, repeat: see the module docstring."""
    from ptflow.app.settings import compile_plan
    from ptflow.core import engine
    from ptflow.core.plan import Plan
    from ptflow.core.stage import RunContext
    from ptflow.core.stage_cache import StageCache
    from ptflow.measure import device

    started = time.perf_counter()
    plan = compile_plan(job["config"], job.get("choices") or {})
    names = [planned.name for planned in plan.stages]
    if job["stage"] not in names:
        raise ValueError(f"stage {job['stage']!r} is not in the pipeline {names}")
    index = names.index(job["stage"])
    settings = plan.settings
    device.apply_determinism(settings.deterministic, settings.device)
    device.apply(settings.device)
    device.seed_everything(settings.seed)
    cache = StageCache(Path(job["cache_dir"])) if job.get("cache_dir") else None
    with tempfile.TemporaryDirectory(prefix="ptflow-repeat-") as scratch:
        ctx = RunContext(Path(scratch), settings.device.name, settings.seed, job.get("config_hash", "0" * 64),
                         device.capture(settings.device), engine.progress, _warn, cache)
        artifact = engine.run(Plan(settings, plan.stages[:index], plan.choices), ctx)
        _say(out, {"ready": True, "ready_at": time.time(), "build_s": time.perf_counter() - started})
        if commands.readline().strip() != "go":   # the stage stopped: nothing to do
            return 0
        result = plan.stages[index].stage.repeat(artifact, ctx)
    _say(out, {"result": result})
    return 0


def main() -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")   # the protocol's own channel ...
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # ... and whatever else prints goes to the log
    sys.stdout = sys.stderr
    try:
        job = json.loads(sys.stdin.readline() or "null")
        if not isinstance(job, dict):
            raise ValueError("no job on stdin: this process is started by a ptflow stage (benchmark.repeats)")
        return serve(job, out, sys.stdin)
    except KeyboardInterrupt:
        return 130
    except BaseException as error:   # the stage reports it; the log keeps the traceback
        traceback.print_exc()
        _say(out, {"error": describe(error)})
        return 1


def describe(error: BaseException, limit: int = 600) -> str:
    """The error on one line (a stage's failure says which stage and why, over several lines)."""
    from ptflow.core.errors import PtflowError

    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if not isinstance(error, PtflowError):
        text = f"{type(error).__name__}: {text}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
