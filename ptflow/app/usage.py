"""What `ptflow --help` says: usage, the config groups on the search path, and what the
given overrides would pick. Imports Hydra only when there are arguments besides --help to
parse, never torch or mlflow: a bare `ptflow --help` answers in a few hundredths of a second."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ptflow.app.overrides import Source, compose_config, option_groups, source_of

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
  ptflow-reproduce RUN_ID                       run a tracked run again; compare its files and metric
  ptflow-compare [--sweep DIR] [--max-accuracy-drop X]    rank recipes; pick the fastest within a budget
  ptflow-serve RUN_ID [--loadtest | --package DIR]        serve its export (Open Inference Protocol, KServe)

exit codes: 0 finished, 1 a job failed, 2 config rejected before anything ran,
            3 finished but the MLflow record is incomplete (ptflow-runs relog RUN_DIR),
            4 a search (Optuna) ended with no completed trial: every trial's timings were invalid,
            130 / 143 stopped by SIGINT / SIGTERM (runs recorded KILLED)"""


def help_text(argv: Sequence[str]) -> str:
    """Usage, the groups and options on the search path, and what the given overrides pick."""
    from ptflow.app.args import CONFIG_DIR, parse

    rest = [a for a in argv if a not in ("-h", "--help")]
    args = parse(rest) if rest else None   # Hydra's parser costs ~0.1 s to import
    source = source_of(args) if args else Source(CONFIG_DIR)
    groups = option_groups(source.dirs)
    lines = [USAGE, f"config groups ({', '.join(str(d) for d in source.dirs)}):"]
    lines += [f"  {name:<12} {', '.join(sorted(options))}" for name, options in sorted(groups.items())]
    if args and args.overrides:
        try:
            config, choices = compose_config(source, _single_values(args.overrides), resolve=False)
            picked = " ".join(f"{g}={c}" for g, c in sorted(choices.items()) if not g.startswith("hydra"))
            lines.append(f"\nwith these overrides: {picked}\n  pipeline: {' → '.join(config.get('pipeline', []))}")
        except Exception as error:   # a parse error or a config that does not compose: say what
            from ptflow.app.overrides import explain

            lines.append(f"\nwith these overrides: {explain(args.overrides, source, True, error)}")
    lines.append("\nresults: outputs/ (run dirs, mlflow.db); UI: mlflow ui --backend-store-uri "
                 f"sqlite:///{Path('outputs/mlflow.db').resolve()}")
    return "\n".join(lines)


def _single_values(overrides: Sequence[str]) -> list[str]:
    """The overrides with each sweep cut to its first value (what --help can compose)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override():
            kept.append(override.input_line)
            continue
        try:
            kept.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        except Exception:   # glob() and interval() cannot be listed without Hydra's loader
            pass
    return kept
