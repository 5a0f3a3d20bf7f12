"""The `ptflow` command: a Hydra app whose every job is checked before the first one runs.

Hydra parses the command line, composes the config and expands sweeps itself; the
`ptflow.app.preflight.Preflight` callback checks what it produces. When Hydra refuses the
command line outright (it stops at the first bad override), `ptflow.app.overrides.explain`
lists every problem at once.

Exit codes: 0 all jobs finished, 1 a job failed, 2 the config was rejected (nothing ran),
3 finished but the MLflow record is incomplete, 130/143 stopped by SIGINT/SIGTERM.
Only hydra/omegaconf are imported up front; torch, torchao and mlflow load when needed,
so `ptflow --help` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ptflow.app.args import CONFIG_DIR, parse
from ptflow.core.errors import ConfigError

CALLBACK = "++hydra.callbacks.ptflow_preflight._target_=ptflow.app.preflight.Preflight"
NEVER_IMPORTED = frozenset({"test", "tests", "conftest", "setup"})   # no warning for these names

def _hydra_argv(argv: Sequence[str], args: argparse.Namespace) -> list[str]:
    """The command line for Hydra: -cp made absolute (ptflow's code is not where the user is),
    and `--cfg hydra --resolve` in a form that resolves (the hydra node refers to job keys)."""
    out, items = [], iter(argv)
    for arg in items:
        if arg in ("-cp", "--config-path"):
            out += [arg, str(Path(next(items, ".")).resolve())]
        elif arg.startswith("--config-path="):
            out.append(f"--config-path={Path(arg.split('=', 1)[1]).resolve()}")
        else:
            out.append(arg)
    if args.cfg == "hydra" and args.resolve and not args.package:
        out = [("all" if a == "hydra" and prev in ("--cfg", "-c") else a) for prev, a in zip(["", *out], out)]
        out += ["--package", "hydra"]
    return out


def _launch(args: Sequence[str]) -> None:
    import hydra

    from ptflow.app.job import hydra_task

    entry = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(hydra_task)
    saved = sys.argv
    sys.argv = ["ptflow", *args]
    try:
        entry()
    finally:
        sys.argv = saved


def _rejected(error: ConfigError) -> int:
    print(f"ptflow: {error}\nnothing was run (ptflow dry_run=true checks a config without running it)",
          file=sys.stderr)
    return error.exit_code


def _stopped(error: BaseException) -> int:
    """One line for the console after SIGINT/SIGTERM; every run left RUNNING is closed."""
    from ptflow.app import sweep
    from ptflow.app.job import OUTCOMES
    from ptflow.app.launch import LAUNCH
    from ptflow.core import lifecycle
    from ptflow.runs.summary import relative

    stop = lifecycle.as_interrupted(error)
    if LAUNCH.mode == "multirun":
        with lifecycle.protected():
            sweep.close(LAUNCH.dir, stop, LAUNCH.stores)
            sweep.close_parents(LAUNCH.dir, LAUNCH.expected, stop.signal_name)
        return stop.exit_code
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


def _version() -> str:
    from importlib.metadata import version

    import hydra

    return f"ptflow {version('ptflow')} (Hydra {hydra.__version__})"


def _user_dir_importable() -> Callable[[], None]:
    """Make the directory ptflow runs from importable, as `python -m` does, for `_target_`s and
    `plugins` in the user's own modules: first on sys.path, and on PYTHONPATH for launcher
    workers (joblib's loky processes, submitit) that start from the environment. PYTHONSAFEPATH
    (python -P) opts out, as it does for `python -m`. Returns the undo, for in-process callers."""
    if getattr(sys.flags, "safe_path", False):
        return lambda: None
    cwd = os.getcwd()
    inserted = not any(entry and os.path.abspath(entry) == cwd for entry in sys.path)
    if inserted:   # (`python -m ptflow` put it there already; '' would follow a chdir'd job)
        for line in _shadowed_by(cwd):
            print(f"ptflow: warning: {line}", file=sys.stderr)
        sys.path.insert(0, cwd)
    saved = os.environ.get("PYTHONPATH")
    entries = [entry for entry in (saved or "").split(os.pathsep) if entry]
    if cwd not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *entries])

    def undo() -> None:
        if inserted and cwd in sys.path:
            sys.path.remove(cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved

    return undo


def _shadowed_by(directory: str) -> list[str]:
    """Modules in `directory` that hide an installed module of the same name once it is first
    on sys.path (`python -m` hides them the same way): one line each, to warn."""
    import importlib.util

    lines = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if entry.name.endswith(".py") and entry.is_file():
            name = entry.name[:-3]
        elif entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")):
            name = entry.name
        else:
            continue
        if not name.isidentifier() or name in NEVER_IMPORTED:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        where = spec.origin if spec and spec.origin not in (None, "built-in", "frozen") else None
        if spec is not None and not (where or "").startswith(directory + os.sep):
            lines.append(f"./{entry.name} hides the installed module '{name}' ({where or spec.origin}) in "
                         "this run, as `python -m` would; rename it unless that is what you want")
    return lines


def run(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from ptflow.app.usage import help_text

        print(help_text(argv))
        return 0
    if "--version" in argv:
        print(_version())
        return 0
    undo = _user_dir_importable()
    try:
        return _run(argv)
    finally:
        undo()


def _run(argv: Sequence[str]) -> int:
    args = parse(argv)
    hydra_argv = _hydra_argv(argv, args)
    if args.cfg and args.multirun:   # Hydra raises a bare ValueError for this pair
        return _rejected(ConfigError.single("--cfg", args.cfg, "--cfg without -m/--multirun",
                                            "Hydra shows one composed config: drop -m (sweep values "
                                            "are then single values), or use dry_run=true to check every job"))
    if args.cfg or args.info or args.hydra_help or args.shell_completion:
        _launch(hydra_argv)            # Hydra's own answers; nothing runs
        return 0
    from ptflow.app import launch, preflight
    from ptflow.app.job import OUTCOMES
    from ptflow.core import lifecycle

    lifecycle.install()
    lifecycle.reset()                  # one `ptflow` invocation, one fresh state, also in-process
    OUTCOMES.clear()
    launch.LAUNCH = launch.Launch(argv=tuple(argv))
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"   # Hydra's refusals reach ptflow, which explains them in full
    # Workers killed mid-job leave semaphores behind; the resource tracker's warning about
    # them would bury the one line that says what happened.
    quiet = "ignore:resource_tracker:UserWarning"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    try:
        launch.LAUNCH.rerun = bool(args.experimental_rerun)
        _launch([*hydra_argv, *([] if args.experimental_rerun else [CALLBACK])])
    except preflight.Rejected as rejected:
        return _rejected(rejected.error)
    except preflight.DryRun:
        return 0
    except KeyboardInterrupt as error:
        return _stopped(error)
    except Exception as error:
        if launch.LAUNCH.mode is None:    # Hydra refused the command line before the check
            from ptflow.app.overrides import explain, source_of

            multirun = args.multirun or any(o.replace(" ", "") == "hydra.mode=MULTIRUN" for o in args.overrides)
            return _rejected(explain(args.overrides, source_of(args), multirun, error))
        if launch.LAUNCH.mode == "multirun":   # the launcher failed mid-sweep (a worker crashed)
            from ptflow.app import sweep

            return sweep.launcher_failed(error, launch.LAUNCH)
        raise                          # after the check passed, in a single run: a bug, with its traceback
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
    if launch.LAUNCH.mode == "multirun":
        from ptflow.app import sweep

        code = sweep.report(launch.LAUNCH.dir, launch.LAUNCH.expected)
        sweep.close_parents(launch.LAUNCH.dir, launch.LAUNCH.expected)
        return code
    return OUTCOMES[-1].exit_code if OUTCOMES else 1


def main() -> None:
    code = run(sys.argv[1:])
    _skip_the_last_collections()
    sys.exit(code)


def _skip_the_last_collections() -> None:
    """Before exiting: every object into the permanent generation, which the interpreter's
    final garbage collections skip (torch, MLflow and the run leave millions of objects: they
    made 1-2 s of every run's exit on a 2-core box). Threads are still joined, atexit handlers
    still run and objects are still freed as their references go; only cycles left at exit
    are not collected, as if the process had been killed after it finished."""
    import gc

    gc.freeze()
