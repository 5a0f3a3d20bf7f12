"""The `ptflow` command: check everything first, then let Hydra run the jobs.

Exit codes: 0 all jobs finished, 1 a job failed, 2 the config was rejected (nothing ran),
3 finished but the MLflow record is incomplete, 130/143 stopped by SIGINT/SIGTERM.
Only hydra/omegaconf are imported up front; torch, torchao and mlflow load when needed,
so `ptflow --help` answers at once.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ptflow.errors import ConfigError

# conf/ ships as the package ptflow.conf (pyproject maps it): a real directory in wheel and editable installs.
CONFIG_DIR = Path(os.environ.get("PTFLOW_CONFIG_DIR") or resources.files("ptflow.conf"))
MULTIRUN_FLAGS = {"-m", "--multirun"}
CONFIG_DIR_FLAGS = {"-cd", "--config-dir"}
HYDRA_PASSTHROUGH = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc",
                     "--resolve", "--package", "-p")

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
  ptflow-runs relog RUN_DIR                     log a run into MLflow again (after an outage)
  ptflow-runs close-stale                       close runs whose process was killed (SIGKILL, OOM)

exit codes: 0 finished, 1 a job failed, 2 config rejected before anything ran,
            3 finished but the MLflow record is incomplete (ptflow-runs relog RUN_DIR),
            130 / 143 stopped by SIGINT / SIGTERM (runs recorded KILLED)
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


def _prepare_tracking(jobs) -> list[tuple[str, str]]:
    """Check each store, create its schema and experiment once (here, before any job),
    and close runs of this host's dead processes; return [(uri, experiment id)]."""
    from ptflow.tracking import prepare_or_problem, store_uri

    stores: dict[tuple[str, str], str] = {}
    problems = []
    for job in jobs:
        settings = job.plan.settings
        if not settings.tracking.enabled:
            continue
        outputs_dir = Path(settings.outputs_dir).resolve()
        key = (store_uri(settings.tracking, outputs_dir), settings.tracking.experiment)
        if key in stores or any(p.found == key[0] for p in problems):
            continue
        experiment_id, found = prepare_or_problem(settings.tracking, outputs_dir)
        problems += found
        if experiment_id is not None:
            stores[key] = experiment_id
    if problems:
        raise ConfigError(problems)
    for (uri, _), experiment_id in stores.items():
        _close_stale(uri, experiment_id)
    return [(uri, experiment_id) for (uri, _), experiment_id in stores.items()]


def _close_stale(uri: str, experiment_id: str) -> None:
    from mlflow.tracking import MlflowClient

    from ptflow.stale import close_stale_runs

    closed = close_stale_runs(MlflowClient(tracking_uri=uri), [experiment_id])
    if closed:
        print(f"ptflow: closed {len(closed)} earlier run(s) whose process on this host is gone "
              f"as KILLED (tag ptflow.kill_reason): {', '.join(closed)}", file=sys.stderr)


def _dir_override(kind: str, jobs, overrides: list[str]) -> tuple[Path, list[str]]:
    """Claim the run (or sweep) dir Hydra would use, or a numbered variant if another
    process has it, and hand it to Hydra in place of any user override of it."""
    from ptflow.files import claim_dir
    from ptflow.job import RESULT_FILE

    key = f"hydra.{kind}.dir"
    wanted = jobs[0].dirs.get(kind)
    if wanted is None:
        raise ConfigError.single(key, "?", "a directory that resolves before the job starts",
                                 "use ${now:...}, ${outputs_dir} and plain text in it")
    try:
        path = Path(wanted)
        claimed = claim_dir(path if path.name else path.resolve(), taken_if=(RESULT_FILE,))   # '.' too
    except OSError as error:
        raise ConfigError.single(key, wanted, "a directory ptflow can create",
                                 f"{type(error).__name__}: {error}") from None
    quoted = str(claimed).replace("\\", "\\\\").replace("'", "\\'")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") != key]
    return claimed, [*kept, f"{key}='{quoted}'"]


def _stopped(error: BaseException, sweep_dir: Path | None, stores: list[tuple[str, str]]) -> int:
    """One line for the console after SIGINT/SIGTERM; every run left RUNNING is closed."""
    from ptflow import lifecycle, sweep
    from ptflow.job import OUTCOMES

    stop = lifecycle.as_interrupted(error)
    if sweep_dir is None:
        from ptflow.summary import relative

        last = OUTCOMES[-1] if OUTCOMES else None
        if last is None:
            print(f"ptflow: stopped by {stop.signal_name} before a run started; nothing was recorded",
                  file=sys.stderr)
        elif last.status != "KILLED":
            print(f"ptflow: stopped by {stop.signal_name} after the run ended {last.status}; its record "
                  f"is in {relative(last.run_dir)}", file=sys.stderr)
        else:
            mlflow = f"MLflow run {last.tracking.run_id} ended KILLED; " if last.tracking.complete else ""
            print(f"ptflow: {last.reason}: stopped; {mlflow}the run's record (KILLED) and partial "
                  f"outputs are in {relative(last.run_dir)}", file=sys.stderr)
        return stop.exit_code
    with lifecycle.protected():
        sweep.close(sweep_dir, stop, stores)
    return stop.exit_code


def _version() -> str:
    from importlib.metadata import version

    import hydra

    return f"ptflow {version('ptflow')} (Hydra {hydra.__version__})"


def run(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    if "--version" in argv:
        print(_version())
        return 0
    if any(a.split("=", 1)[0] in HYDRA_PASSTHROUGH for a in argv):
        _launch(argv)
        return 0
    from ptflow import lifecycle

    lifecycle.install()
    stores: list[tuple[str, str]] = []
    try:
        return _run_checked(argv, stores)
    except KeyboardInterrupt as error:
        return _stopped(error, _SWEEP_DIR[-1] if _SWEEP_DIR else None, stores)


_SWEEP_DIR: list[Path] = []   # the sweep being launched, for the clean-up after a signal


def _run_checked(argv: Sequence[str], stores: list[tuple[str, str]]) -> int:
    multirun, dirs, flags, overrides = _split_args(argv)
    from ptflow import preflight

    try:
        checked = preflight.check(overrides, CONFIG_DIR, dirs, multirun)
        if any(job.plan.settings.dry_run for job in checked.jobs):
            for job in checked.jobs:
                print(f"[{' '.join(job.overrides) or 'defaults'}]\n{job.plan.render()}")
            print(f"dry run: {len(checked.jobs)} job(s) checked, nothing run")
            return 0
        stores += _prepare_tracking(checked.jobs)
        target, args = _dir_override("sweep" if multirun else "run", checked.jobs, list(checked.overrides))
    except ConfigError as error:
        print(f"ptflow: {error}\nnothing was run (ptflow dry_run=true checks a config without running it)",
              file=sys.stderr)
        return error.exit_code
    if not multirun:
        from ptflow.job import OUTCOMES

        _launch([*flags, *args])
        return OUTCOMES[-1].exit_code if OUTCOMES else 1
    _SWEEP_DIR.append(target)
    # Workers killed mid-job leave semaphores behind; the resource tracker's warning
    # about them would bury the one line that says what happened.
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                          "ignore:resource_tracker:UserWarning"]))
    _launch([*flags, *args])
    from ptflow import sweep

    return sweep.report(target, len(checked.jobs))


def main() -> None:
    sys.exit(run(sys.argv[1:]))
