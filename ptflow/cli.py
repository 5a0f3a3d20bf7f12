"""The `ptflow` command: a Hydra app whose every job is checked before the first one runs.

Hydra parses the command line, composes the config and expands sweeps itself; the
`ptflow.preflight.Preflight` callback checks what it produces. When Hydra refuses the
command line outright (it stops at the first bad override), `ptflow.overrides.explain`
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
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ptflow.errors import ConfigError

# conf/ ships as the package ptflow.conf (pyproject maps it): a real directory in wheel and editable installs.
CONFIG_DIR = Path(os.environ.get("PTFLOW_CONFIG_DIR") or resources.files("ptflow.conf"))
CALLBACK = "++hydra.callbacks.ptflow_preflight._target_=ptflow.preflight.Preflight"

USAGE = """\
ptflow — compile, optimize, benchmark and export a PyTorch model as a checked pipeline.

usage: ptflow [-m] [-cn NAME] [-cp DIR] [-cd DIR] [group=option ...] [key=value ...]

  ptflow                                        the default pipeline (one MLflow run)
  ptflow quantize=none compile=inductor         pick recipes by config group
  ptflow -m quantize=none,int8_dynamic compile=eager,inductor    sweep: one run per job
  ptflow -m 'quantize=glob(*)' 'seed=range(0,3)'                 any Hydra sweep grammar
  ptflow -m experiment=search                   Optuna: best speedup within an accuracy budget
  ptflow dry_run=true                           check the config, print the plan, run nothing
  ptflow pipeline=[load,validate,benchmark]     the stage list is config too
  ptflow benchmark.iters=300 device.threads=1   change any key
  ptflow --cfg job                              print the composed config (Hydra)
  ptflow --hydra-help                           Hydra's own flags
  ptflow-runs relog RUN_DIR                     log a run into MLflow again (after an outage)
  ptflow-runs close-stale                       close runs whose process was killed (SIGKILL, OOM)

exit codes: 0 finished, 1 a job failed, 2 config rejected before anything ran,
            3 finished but the MLflow record is incomplete (ptflow-runs relog RUN_DIR),
            130 / 143 stopped by SIGINT / SIGTERM (runs recorded KILLED)"""


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(argv))


def _source(args: argparse.Namespace):
    from ptflow.overrides import Source

    primary = Path(args.config_path).resolve() if args.config_path else CONFIG_DIR
    extra = tuple(_searchpath(args.overrides))
    return Source(primary, args.config_name or "config",
                  ((Path(args.config_dir).resolve(),) if args.config_dir else ()) + extra)


def _searchpath(overrides: Sequence[str]) -> list[Path]:
    """Folders that `hydra.searchpath=[...]` adds (file:// and pkg:// entries)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") != "hydra.searchpath":
            continue
        found = []
        for item in value.strip("[]").split(","):
            item = item.strip().strip("'\"")
            if item.startswith("file://"):
                found.append(Path(item[len("file://"):]).resolve())
            elif item.startswith("pkg://"):
                try:
                    found.append(Path(str(resources.files(item[len("pkg://"):].replace("/", ".")))))
                except Exception:   # Hydra reports a missing package in its own words
                    pass
        return found
    return []


def _help(argv: Sequence[str]) -> str:
    """Usage, the groups and options on the search path, and what the given overrides pick."""
    from ptflow.overrides import compose_config, option_groups

    args = _parse([a for a in argv if a not in ("-h", "--help")])
    source = _source(args)
    groups = option_groups(source.dirs)
    lines = [USAGE, f"config groups ({', '.join(str(d) for d in source.dirs)}):"]
    lines += [f"  {name:<12} {', '.join(sorted(options))}" for name, options in sorted(groups.items())]
    if args.overrides:
        try:
            config, choices = compose_config(source, [o for o in args.overrides if "(" not in o and "," not in o],
                                             resolve=False)
            picked = " ".join(f"{g}={c}" for g, c in sorted(choices.items()) if not g.startswith("hydra"))
            lines.append(f"\nwith these overrides: {picked}\n  pipeline: {' → '.join(config.get('pipeline', []))}")
        except ConfigError as error:
            lines.append(f"\nwith these overrides: {error}")
    lines.append("\nresults: outputs/ (run dirs, mlflow.db); UI: mlflow ui --backend-store-uri "
                 f"sqlite:///{Path('outputs/mlflow.db').resolve()}")
    return "\n".join(lines)


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

    from ptflow.job import hydra_task

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
    from ptflow import lifecycle, sweep
    from ptflow.job import OUTCOMES
    from ptflow.preflight import LAUNCH
    from ptflow.summary import relative

    stop = lifecycle.as_interrupted(error)
    if LAUNCH.mode == "multirun":
        with lifecycle.protected():
            sweep.close(LAUNCH.dir, stop, LAUNCH.stores)
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


def run(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(_help(argv))
        return 0
    if "--version" in argv:
        print(_version())
        return 0
    args = _parse(argv)
    hydra_argv = _hydra_argv(argv, args)
    if args.cfg or args.info or args.hydra_help or args.shell_completion:
        _launch(hydra_argv)            # Hydra's own answers; nothing runs
        return 0
    from ptflow import lifecycle, preflight

    lifecycle.install()
    preflight.LAUNCH = preflight.Launch()
    os.environ["HYDRA_FULL_ERROR"] = "1"   # Hydra's refusals reach ptflow, which explains them in full
    try:
        _launch([*hydra_argv, *([] if args.experimental_rerun else [CALLBACK])])
    except preflight.Rejected as rejected:
        return _rejected(rejected.error)
    except preflight.DryRun:
        return 0
    except KeyboardInterrupt as error:
        return _stopped(error)
    except Exception as error:
        if preflight.LAUNCH.mode is not None:
            raise                      # after the check passed: a bug, shown with its traceback
        from ptflow.overrides import explain

        multirun = args.multirun or any(o.replace(" ", "") == "hydra.mode=MULTIRUN" for o in args.overrides)
        return _rejected(explain(args.overrides, _source(args), multirun, error))
    if preflight.LAUNCH.mode == "multirun":
        from ptflow import sweep

        return sweep.report(preflight.LAUNCH.dir, preflight.LAUNCH.expected)
    from ptflow.job import OUTCOMES

    return OUTCOMES[-1].exit_code if OUTCOMES else 1


def main() -> None:
    sys.exit(run(sys.argv[1:]))
