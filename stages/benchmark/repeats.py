"""benchmark.repeats: the timing again in fresh processes, and one interval over all of them.

The run's own process is repeat 1. Repeats 2..N are worker processes (spawned, never forked:
a fork would inherit this process's memory layout, the very thing that differs between
processes) that rebuild the run up to the benchmark stage from its resolved config (same
seed, same device settings; the stage cache's entries are hits, the inductor cache is warm)
and then time baseline and candidate exactly as this process did (``BenchmarkStage.repeat``).

Workers start right after this process's own timing and build in parallel while it runs its
untimed passes; once all are built, holding the device lock, it lets them time **one at a
time** (the lock is not held while they build: a rebuild may take it itself): nothing
else of this run computes while a sample is taken. A worker's start-up (interpreter, imports,
rebuild) is reported apart (``benchmark.repeat_startup_s``) and never timed. A worker that
fails is a warning, not a failed run: the interval then covers the processes that reported,
and says how many.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.core.stage import Rebuild
from ptflow.measure.hierarchy import Combined, combine
from ptflow.measure.stats import Ratio

MARK = "PTFLOW-REPEAT "     # ptflow.app.repeat_worker's lines on its stdout


@dataclass
class Worker:
    """One repeat's process, from spawn to its result."""

    repeat: int                    # 2..N (1 is the run's own process)
    process: subprocess.Popen
    log: Path
    started: float                 # time.time() at spawn (the worker reports when it was ready)
    startup_s: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self) -> dict[str, Any]:
        """The worker's next protocol line; ``{"error": ...}`` when it ended without one."""
        for line in self.process.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.process.wait()
        return {"error": f"the worker exited with status {self.process.returncode} {self._tail()}".rstrip()}

    def _tail(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return f"({' | '.join(lines[-3:])})" if lines else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()   # the worker exits at end of input ...
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()          # ... or is made to
                self.process.wait()
        for stream in (self.process.stdout, self.process.stdin):
            if stream is not None and not stream.closed:
                stream.close()


def start(rebuild: Rebuild, stage: str, count: int, log_dir: Path, cache_dir: str | None,
          config_hash: str) -> list[Worker]:
    """Spawn `count` workers (repeats 2..count+1), each sent its job; they build at once."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # the user's own modules (plugins, a model's _target_) import as they did for the run
    env["PYTHONPATH"] = os.pathsep.join(p for p in (rebuild.cwd, env.get("PYTHONPATH")) if p)
    job = json.dumps({**rebuild.job, "stage": stage, "cache_dir": cache_dir, "config_hash": config_hash})
    workers = []
    for repeat in range(2, count + 2):
        log = log_dir / f"repeat{repeat}.log"
        with log.open("w") as err:
            process = subprocess.Popen(list(rebuild.command), cwd=rebuild.cwd, env=env, text=True, bufsize=1,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        worker = Worker(repeat, process, log, time.time())
        try:
            process.stdin.write(job + "\n")
            process.stdin.flush()
        except OSError:
            pass   # it died at once: read() reports it
        workers.append(worker)
    return workers


def wait_ready(workers: Sequence[Worker]) -> None:
    """Wait until every worker is built (or failed). Called *before* the stage takes the device
    lock: a rebuild may itself take it for a while (an export stage earlier in the pipeline starts
    its fresh-process check under it), and a lock held here would wait on a worker waiting on it."""
    for worker in workers:   # all build in parallel; waiting for each in turn waits for the slowest
        answer = worker.read()
        if "ready" in answer:   # its own clock: waiting here for a slower one is not its start-up
            worker.startup_s = answer.get("ready_at", time.time()) - worker.started
            worker.extra["build_s"] = answer.get("build_s")
        else:
            worker.error = answer.get("error", "no answer")
            worker.stop()


def run_turns(workers: Sequence[Worker], say: Callable[[str], None]) -> None:
    """Let each built worker time alone, in order (the caller holds the device lock)."""
    for worker in workers:
        if worker.error is not None:
            continue
        say(f"repeat {worker.repeat}/{len(workers) + 1}: timing in a fresh process")
        try:
            worker.process.stdin.write("go\n")
            worker.process.stdin.flush()
        except OSError:
            pass
        answer = worker.read()
        if "result" in answer:
            worker.result = answer["result"]
        else:
            worker.error = answer.get("error", "no answer")
        worker.stop()


def stop_all(workers: Sequence[Worker]) -> None:
    for worker in workers:
        worker.stop()


def ratio_of(record: Mapping[str, Any] | None) -> Ratio | None:
    """A worker's [value, low, high] as a Ratio."""
    if not record:
        return None
    value, low, high = record
    return Ratio(value, low, high)


def combined_speedups(own: Sequence[Ratio | None], workers: Sequence[Worker]) -> list[Combined | None]:
    """Per batch size: the run's own ratio and every worker's, combined (None: no baseline)."""
    found = []
    for index, mine in enumerate(own):
        if mine is None:
            found.append(None)
            continue
        ratios = [mine] + [r for w in workers if w.result is not None
                           if (r := ratio_of(w.result["sizes"][index].get("speedup"))) is not None]
        found.append(combine(ratios))
    return found


def dispersions_of(result: Mapping[str, Any], by_size: bool) -> dict[str, float]:
    """A worker's IQR/median of every timing, named as ``timing.dispersions`` names them."""
    return {(f"bs{size['batch_size']} {role}" if by_size else role): value
            for size in result["sizes"] for role, value in size["dispersion"].items()}


def figures(own: Mapping[str, Any], workers: Sequence[Worker], repeat_s: float) -> dict[str, float]:
    """Per repeat (1: the run's own process): its speedup and interval, each role's p50, and
    a worker's start-up; plus the phase's cost. `own` is repeat 1's headline record."""
    rows = [(1, own, None)] + [(w.repeat, w.result["sizes"][0], w.startup_s) for w in workers
                               if w.result is not None]
    metrics: dict[str, float] = {}
    for repeat, size, startup in rows:
        prefix = f"benchmark.repeat.{repeat}"
        if size.get("speedup"):
            value, low, high = size["speedup"]
            metrics.update({f"{prefix}.speedup_p50": value, f"{prefix}.speedup_ci_low": low,
                            f"{prefix}.speedup_ci_high": high})
        for role, p50 in size["p50_ms"].items():
            metrics[f"{prefix}.{role}.p50_ms"] = p50
        if startup is not None:
            metrics[f"{prefix}.startup_s"] = startup
    startups = [w.startup_s for w in workers if w.startup_s is not None]
    if startups:
        metrics["benchmark.repeat_startup_s"] = statistics.median(startups)
    metrics["benchmark.repeats_s"] = repeat_s
    return metrics
