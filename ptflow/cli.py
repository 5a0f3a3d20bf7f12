"""The `ptflow` command: check everything first, then let Hydra run the jobs.

Exit codes: 0 all jobs finished, 1 a job failed, 2 the config was rejected (nothing ran).
Only hydra/omegaconf are imported up front; torch, torchao and mlflow load when needed,
so `ptflow --help` answers at once.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ptflow.errors import ConfigError

CONFIG_DIR = Path(os.environ.get("PTFLOW_CONFIG_DIR") or Path(__file__).resolve().parents[1] / "conf")
MULTIRUN_FLAGS = {"-m", "--multirun"}
CONFIG_DIR_FLAGS = {"-cd", "--config-dir"}
HYDRA_PASSTHROUGH = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc",
                     "--resolve", "--version", "--package", "-p")

USAGE = """\
ptflow — compile, optimize, benchmark and export a PyTorch model as a checked pipeline.

usage: ptflow [-m] [group=option ...] [key=value ...]

  ptflow                                        the default pipeline (one MLflow run)
  ptflow quantize=none compile=inductor         pick recipes by config group
  ptflow -m quantize=none,int8_dynamic compile=eager,inductor    sweep: one run per job
  ptflow dry_run=true                           check the config, print the plan, run nothing
  ptflow pipeline=[load,validate,benchmark]     the stage list is config too
  ptflow benchmark.iters=300 device.threads=1   change any key
  ptflow --cfg job                              print the composed config (Hydra)
  ptflow --hydra-help                           Hydra's own flags

exit codes: 0 finished, 1 a job failed, 2 config rejected before anything ran
config groups (conf/):
"""


def _help() -> str:
    from ptflow.preflight import option_groups

    groups = option_groups([CONFIG_DIR])
    lines = [USAGE.rstrip("\n")]
    lines += [f"  {name:<12} {', '.join(sorted(options))}" for name, options in sorted(groups.items())]
    lines.append(f"\nresults: outputs/ (run dirs, mlflow.db); UI: mlflow ui --backend-store-uri "
                 f"sqlite:///{Path('outputs/mlflow.db').resolve()}")
    return "\n".join(lines)


def _launch(args: Sequence[str]) -> None:
    import hydra

    from ptflow.job import hydra_task

    entry = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(hydra_task)
    saved = sys.argv
    sys.argv = ["ptflow", *args]
    try:
        entry()
    finally:
        sys.argv = saved


def _split_args(argv: Sequence[str]) -> tuple[bool, list[Path], list[str], list[str]]:
    """(multirun, extra config dirs, hydra flags to pass on, overrides)."""
    multirun, dirs, flags, overrides = False, [], [], []
    items = iter(argv)
    for arg in items:
        if arg in MULTIRUN_FLAGS:
            multirun = True
            flags.append(arg)
        elif arg in CONFIG_DIR_FLAGS or arg.startswith("--config-dir="):
            value = arg.split("=", 1)[1] if "=" in arg else next(items, "")
            dirs.append(Path(value).resolve())
            flags += ["--config-dir", str(Path(value).resolve())]
        else:
            overrides.append(arg)
    return multirun, dirs, flags, overrides


def _prepare_tracking(jobs) -> None:
    """Create the MLflow schema and experiment(s) once, here, before any job starts."""
    from ptflow.tracking import prepare, store_uri

    done = set()
    for job in jobs:
        settings = job.plan.settings
        if not settings.tracking.enabled:
            continue
        outputs_dir = Path(settings.outputs_dir).resolve()
        key = (store_uri(settings.tracking, outputs_dir), settings.tracking.experiment)
        if key not in done:
            try:
                prepare(settings.tracking, outputs_dir)
            except Exception as error:
                raise ConfigError.single("tracking.uri", key[0], "an MLflow store ptflow can open",
                                         f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
            done.add(key)


def _sweep_dir(outputs_dir: str) -> Path:
    now = dt.datetime.now()
    base = Path(outputs_dir) / "multirun" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    candidate, n = base, 0
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _sweep_report(sweep_dir: Path, expected: int) -> int:
    from ptflow.job import RESULT_FILE

    results = sorted((json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{RESULT_FILE}")),
                     key=lambda r: r["run_dir"])
    failed = [r for r in results if r["status"] != "FINISHED"]
    shared = set.intersection(*(set(r["overrides"]) for r in results)) if len(results) > 1 else set()
    lines = [f"sweep: {len(results)}/{expected} job(s) in {sweep_dir}: "
             f"{len(results) - len(failed)} finished, {len(failed)} failed",
             f"  {'job':<42}{'status':<10}{'p50 ms':>9}{'speedup':>9}{'metric Δ':>10}  run id"]
    for result in results:
        s = result.get("summary") or {}
        p50 = s.get("latency_ms", {}).get("optimized", {}).get("p50")
        speedup, delta = s.get("speedup_p50"), (s.get("task_metric") or {}).get("delta")
        swept = " ".join(o for o in result["overrides"] if o not in shared) or "(defaults)"
        lines.append(f"  {swept[:41]:<42}{result['status']:<10}"
                     f"{'' if p50 is None else f'{p50:.3f}':>9}"
                     f"{'' if speedup is None else f'{speedup:.2f}x':>9}"
                     f"{'' if delta is None else f'{delta:+.4f}':>10}  {result.get('run_id') or ''}")
    print("\n".join(lines), flush=True)
    return 1 if failed or len(results) < expected else 0


def run(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    if any(a.split("=", 1)[0] in HYDRA_PASSTHROUGH for a in argv):
        _launch(argv)
        return 0
    multirun, dirs, flags, overrides = _split_args(argv)
    from ptflow import preflight

    try:
        checked = preflight.check(overrides, CONFIG_DIR, dirs, multirun)
        if any(job.plan.settings.dry_run for job in checked.jobs):
            for job in checked.jobs:
                print(f"[{' '.join(job.overrides) or 'defaults'}]\n{job.plan.render()}")
            print(f"dry run: {len(checked.jobs)} job(s) checked, nothing run")
            return 0
        _prepare_tracking(checked.jobs)
    except ConfigError as error:
        print(f"ptflow: {error}\nnothing was run (ptflow dry_run=true checks a config without running it)",
              file=sys.stderr)
        return error.exit_code
    args = [*flags, *checked.overrides]
    if not multirun:
        from ptflow.job import OUTCOMES

        _launch(args)
        return OUTCOMES[-1].exit_code if OUTCOMES else 1
    sweep_dir = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    if sweep_dir is None:
        sweep_dir = _sweep_dir(checked.jobs[0].plan.settings.outputs_dir)
        args.append(f"hydra.sweep.dir={sweep_dir}")
    _launch(args)
    return _sweep_report(sweep_dir, len(checked.jobs))


def main() -> None:
    sys.exit(run(sys.argv[1:]))
