"""`ptflow-compare`: rank the runs of a sweep from MLflow, plot their Pareto front, and pick the
best recipe under an accuracy budget.

  ptflow-compare [--sweep ID | --parent RUN_ID | --all] [--filter "MLFLOW FILTER"]
                 [--experiment NAME] [--tracking-uri URI | --outputs-dir DIR]
                 [--max-accuracy-drop X | X%] [--register NAME] [--out DIR] [--plot PATH] [--strict]

Default: the last sweep (the newest parent run's children) of experiment 'ptflow' in the store
ptflow itself uses (--tracking-uri, else MLFLOW_TRACKING_URI, else
sqlite:///<outputs-dir>/mlflow.db). Runs are ranked by speedup p50, every stable measurement
before any unstable one; invalid, failed and killed runs are listed unranked. Runs whose 95%
speedup intervals overlap the fastest one's are tied (column tied: #N); under a budget the pick
among the qualifying runs tied with the fastest qualifying one is the smaller accuracy drop,
then the smaller size, then the higher speedup p50. † marks a run measured with fewer repeats
than the others, ‡ one measured on another host.

Exit codes: 0 the table was printed (and, with --max-accuracy-drop, a run qualifies); 1 no run
qualifies under --max-accuracy-drop; 2 bad arguments, no store, an unknown experiment, sweep or
parent, or no runs selected.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "ptflow-compare"
MIN_PREFIX = 6            # as ptflow-reproduce: the shortest run id prefix taken
PREFIX_SEARCH = 1000      # the latest runs searched for a prefix (parent runs: all of them)


class Refused(Exception):
    """Exit 2: what was wrong with the arguments or the store, and how to fix it."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.replace("`", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep", help="a sweep id (tag ptflow.sweep_id) or a unique prefix of one")
    which.add_argument("--parent", help="a sweep's parent run id, or a unique prefix of one (6+ characters): "
                                         "compare its child runs")
    which.add_argument("--all", action="store_true", help="every run of the experiment (parent runs excluded)")
    parser.add_argument("--filter", help="an MLflow search filter, ANDed with the above, e.g. \"tags.quantize != 'none'\"")
    parser.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ptflow",
                        help="experiment name (default: MLFLOW_EXPERIMENT_NAME, else ptflow)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or None,
                        help="the MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///<outputs-dir>/mlflow.db)")
    parser.add_argument("--outputs-dir", type=Path, default=Path("outputs"),
                        help="the outputs_dir whose mlflow.db to read (default: outputs)")
    parser.add_argument("--max-accuracy-drop", metavar="X",
                        help="pick the fastest run whose metric drops at most X (metric units, e.g. 0.01) or X%% "
                             "of the baseline's metric (e.g. 1%%); exit 1 when none does")
    parser.add_argument("--register", metavar="NAME",
                        help="with --max-accuracy-drop: register the picked run's MLflow model (pt2, else onnx) "
                             "as a new version of registered model NAME")
    parser.add_argument("--out", type=Path, help="write compare.csv, compare.md and pareto.png into this dir")
    parser.add_argument("--plot", type=Path, help="write the Pareto plot (PNG) to this path")
    parser.add_argument("--strict", action="store_true",
                        help="rank by speedup p50 alone, ignoring the 95%% intervals: no ties, and the pick under "
                             "--max-accuracy-drop is simply the fastest qualifying run (the behaviour before ties)")
    return parser


def store(tracking_uri: str | None, outputs_dir: Path) -> str:
    """The store URI to read; Refused when there is none. A missing sqlite file is never
    created (MLflow would create an empty one on first contact)."""
    from ptflow.runs.tracking import StoreUnavailable, existing_store

    uri = tracking_uri or f"sqlite:///{(outputs_dir / 'mlflow.db').resolve()}"
    origin = "--tracking-uri / MLFLOW_TRACKING_URI" if tracking_uri else f"--outputs-dir {outputs_dir}"
    try:
        uri = existing_store(uri, origin)
    except StoreUnavailable as error:
        raise Refused(f"{error}; run a sweep first (ptflow -m quantize=none,int8_dynamic), start the server, "
                      "or pass --tracking-uri URI / --outputs-dir DIR") from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # a bar per overrides.txt otherwise
    return uri


def parent_run_id(client: Any, given: str) -> str:
    """The full id of the sweep parent run that `given` names: its id or a unique prefix of it
    (as git takes one). A job's run id is refused, naming its sweep and its parent run; what
    matches nothing is left for the selection to report, with the sweeps that exist."""
    from ptflow.decide.compare_select import PARENT_ID_TAG, PARENT_TAG, SAFE_ID, SWEEP_TAG, is_parent

    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    newest = ["attributes.start_time DESC"]
    parents = client.search_runs(experiment_ids, f"tags.{PARENT_TAG} = 'true'", max_results=PREFIX_SEARCH,
                                 order_by=newest)
    latest = client.search_runs(experiment_ids, max_results=PREFIX_SEARCH, order_by=newest)
    runs = {r.info.run_id: r for r in [*parents, *latest]}
    matches = [r for i, r in runs.items() if i == given] or \
        ([r for i, r in runs.items() if i.startswith(given)] if len(given) >= MIN_PREFIX else [])
    if not matches and SAFE_ID.match(given):   # an older run, past the latest searched
        with contextlib.suppress(Exception):
            matches = [client.get_run(given)]
    if not matches:
        return given
    if len(matches) > 1:
        listed = "".join(f"\n  {r.info.run_id}  {r.info.run_name}" for r in matches[:10])
        raise Refused(f"--parent {given!r} begins {len(matches)} run ids; give more of it:{listed}")
    run = matches[0]
    if is_parent(run):
        return run.info.run_id
    tags = run.data.tags
    name = f"run {run.info.run_id} '{run.info.run_name}'"
    if tags.get(PARENT_ID_TAG):
        raise Refused(f"--parent {given!r}: {name} is a job of sweep {tags.get(SWEEP_TAG, '?')[:8]}, not a sweep's "
                      f"parent run; its parent run is {tags[PARENT_ID_TAG]}: --parent {tags[PARENT_ID_TAG][:8]}")
    if tags.get(SWEEP_TAG):
        raise Refused(f"--parent {given!r}: {name} is a job of sweep {tags[SWEEP_TAG][:8]}, which has no parent "
                      f"run (it predates them): --sweep {tags[SWEEP_TAG][:8]}")
    raise Refused(f"--parent {given!r}: {name} is a single run, not a sweep's parent run; compare it with "
                  "others with --all (narrowed with --filter)")


def recipe_lines(client: Any, row: Any) -> list[str]:
    """How to get the picked recipe again, as commands that work when pasted anywhere: the exact
    reproduction, and the `ptflow` command that re-runs the recipe (the run's command.txt: its
    config dirs and overrides; an older run's overrides.txt), both naming this store."""
    uri = client.tracking_uri
    lines = [f"  reproduce exactly: {shlex.join(['ptflow-reproduce', row.run_id, '--tracking-uri', uri])}"]
    command = _logged_command(client, row.run_id)
    if command is None:
        return lines + ["  re-run the recipe: (no command.txt or overrides.txt artifact in this run)"]
    if not any(arg.lstrip("+~").startswith("tracking.uri=") for arg in command):
        command.append(hydra_override("tracking.uri", uri))
    return lines + [f"  re-run the recipe: {shlex.join(command)}"]


def hydra_override(key: str, value: str) -> str:
    """`key=value` as Hydra parses it back to `value`: quoted when the value holds a character
    Hydra's grammar reads (a comma would make a sweep, brackets a list)."""
    if re.fullmatch(r"[\w./:@%+\- ~]+", value):
        return f"{key}={value}"
    # inside quotes Hydra keeps a backslash as it is, except before a quote or the closing quote
    quoted = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"{key}='{quoted}'"


def _logged_command(client: Any, run_id: str) -> list[str] | None:
    """The run's `ptflow` command (command.txt), else `ptflow` + its overrides (overrides.txt,
    runs from before command.txt), else None. Printed, never run: the user reads it first."""
    with tempfile.TemporaryDirectory(prefix="ptflow-compare-") as scratch:
        for name in ("command.txt", "overrides.txt"):
            try:
                text = Path(client.download_artifacts(run_id, name, scratch)).read_text(encoding="utf-8")
            except Exception:   # absent (an older run, a run from another tool): the reproduction still works
                continue
            if name == "overrides.txt":
                return ["ptflow", *(line.strip() for line in text.splitlines() if line.strip())]
            try:
                command = shlex.split(text)
            except ValueError:
                continue
            if command[:1] == ["ptflow"]:
                return command
    return None


def export_lines(row: Any) -> list[str]:
    """The picked run's exported files that still exist on this machine, and its MLflow models."""
    folder = Path(row.run_dir) / "export" if row.run_dir else None
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else []
    lines = [f"  export file: {path}" for path in files]
    if not files:
        lines.append(f"  export files: none on this machine (looked in {folder})" if folder
                     else "  export files: the run logged no run dir")
    lines += [f"  MLflow model ({fmt}): {uri}" for fmt, uri in row.model_uris]
    return lines


def short_ids(run_ids: Sequence[str], length: int = 8) -> dict[str, str]:
    """Each run id cut to the shortest length >= `length` at which they stay unique."""
    while len({i[:length] for i in run_ids}) < len(set(run_ids)):
        length += 1
    return {i: i[:length] for i in run_ids}


def _reasons(ranked: Sequence[tuple[int | None, Any]]) -> list[str]:
    return [f"  not ranked: {row.name}: {row.unranked_reason}" for number, row in ranked if number is None]


# the terminal's width decides which columns show: at <= NARROW_AT columns only these; wider, the
# others go in DROP_ORDER until the table fits (compare.csv always has every column)
NARROW_AT = 100
NARROW = ("rank", "recipe", "speedup p50 [CI]", "metric Δ", "state")
DROP_ORDER = ("compile s", "p99 ms", "accepted", "size MB", "run id", "p50 ms", "tied")
RIGHT = {"rank", "speedup p50 [CI]", "p50 ms", "p99 ms", "metric Δ", "size MB", "compile s"}


def terminal_width() -> int | None:
    """The width to lay the table out for: the terminal's ($COLUMNS when set); None when the
    output is not a terminal — a file or a pipe gets every column. $COLUMNS alone does not
    narrow a pipe: GNU readline exports COLUMNS=80 into the environment of any process that
    loads it (pytest, an interactive interpreter), and their children inherit it."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def format_table(rows: Sequence[Any], strict: bool = False, width: int | None = None) -> str:
    """The fixed-width table for the terminal (as ptflow's sweep table), with why each unranked
    row is and the notes its cells use (unstable, thin p99, ties, no CI, † and ‡ marks). `width`:
    the terminal's columns (None: every column, nothing wrapped)."""
    import textwrap

    from ptflow.decide import compare as cmp

    ids = short_ids([row.run_id for row in rows])
    shown = cmp.table(rows, lambda row: ids[row.run_id], strict)
    table = [cmp.COLUMNS] + shown.cells
    widths = {name: min(max(len(line[i]) for line in table), 48 if name == "recipe" else 200)
              for i, name in enumerate(cmp.COLUMNS)}
    kept = list(cmp.COLUMNS)
    if width is not None:
        if width <= NARROW_AT:
            kept = [name for name in kept if name in NARROW]
        for name in DROP_ORDER:
            if sum(widths[k] for k in kept) + 2 * (len(kept) - 1) <= width:
                break
            if name in kept:
                kept.remove(name)
        if strict and "tied" in kept:
            kept.remove("tied")
        others = sum(widths[k] for k in kept if k != "recipe") + 2 * (len(kept) - 1)
        widths["recipe"] = max(12, min(widths["recipe"], width - others))   # long names are cut, not wrapped
    index = {name: i for i, name in enumerate(cmp.COLUMNS)}
    lines = ["  ".join(_cell(line[index[name]], widths[name], name) for name in kept).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * widths[name] for name in kept))
    notes = _reasons(shown.ranked) + [f"  {note}" for note in shown.notes]
    if width is not None:
        notes = [textwrap.fill(note, width, subsequent_indent="    ") for note in notes]
        hidden = [name for name in cmp.COLUMNS if name not in kept]
        if hidden:
            notes.append(textwrap.fill(f"  (for a {width}-column terminal; not shown: {', '.join(hidden)} — "
                                       "compare.csv (--out DIR) has every column)", width, subsequent_indent="    "))
    return "\n".join(lines + notes)


def _cell(text: str, width: int, name: str) -> str:
    text = text if len(text) <= width else text[:width - 1] + "…"
    return text.rjust(width) if name in RIGHT else text.ljust(width)


def picked_lines(client: Any, choice: Any) -> list[str]:
    """What to tell about the picked run: its numbers, how to get it again, where its files are."""
    from ptflow.decide.compare import speedup_ci as cmp_speedup_ci

    row = choice.row
    ci = cmp_speedup_ci(row)
    delta = "" if row.delta is None else f", {row.metric} Δ {row.delta:+.4f}"
    p50 = "" if row.p50_ms is None else f", p50 {row.p50_ms:.3f} ms"
    why = [f"  why: {choice.reason}"] if choice.reason else []
    lines = [choice.message, *why, f"  run {row.run_id}: {row.speedup:.2f}x{ci}{p50}{delta} (drop {row.drop:.6g}, "
                                   f"{row.stability or 'stability unknown'})"]
    return lines + recipe_lines(client, row) + export_lines(row) + ([choice.warning] if choice.warning else [])


def compare(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from ptflow.decide import compare as cmp
    from ptflow.runs import sweep_pick

    try:
        budget = cmp.Budget.parse(args.max_accuracy_drop) if args.max_accuracy_drop is not None else None
    except ValueError as error:
        raise Refused(str(error)) from None
    if args.register is not None and (budget is None or not args.register.strip()):
        raise Refused("--register NAME registers the run that --max-accuracy-drop picks: give both, e.g. "
                      "--max-accuracy-drop 0.01 --register digits-clf")
    client = MlflowClient(tracking_uri=store(args.tracking_uri, args.outputs_dir))
    parent = parent_run_id(client, args.parent) if args.parent else None
    try:
        description, runs = cmp.select_runs(client, args.experiment, sweep=args.sweep, parent=parent,
                                            filter_string=args.filter, all_runs=args.all)
    except cmp.SelectionError as error:
        raise Refused(str(error)) from None
    rows = cmp.rows_from_runs(runs)
    print(f"{description}\n{format_table(rows, args.strict, terminal_width())}", flush=True)
    if args.out:
        written = cmp.write_reports(rows, args.out, budget, args.strict)
        print("wrote: " + ", ".join(str(p) for p in written))
    if args.plot:
        from ptflow.decide.pareto import plot

        ranked = [row for row in rows if row.unranked_reason is None]
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        print(f"wrote: {plot(ranked, args.plot, min_delta=budget.min_delta(ranked) if budget else None)}")
    if budget is None:
        return 0
    choice = cmp.pick(rows, budget, args.strict)
    print(choice.message if choice.row is None else "\n".join(picked_lines(client, choice)))
    parent = None if args.all or args.filter else sweep_pick.sweep_parent(client, runs)
    if parent is not None:   # a whole sweep: its parent run's record follows the latest pick
        print(sweep_pick.repick(client, parent, runs, budget, args.strict))
    if choice.row is None:
        return 1
    if args.register:
        print(register(client.tracking_uri, choice.row, args.register))
    return 0


def register(tracking_uri: str, row: Any, name: str) -> str:
    """Register the picked run's logged model (the exact bytes its export wrote) as a new
    version of `name`, tagged with the run and its figures; Refused when it logged none, or
    when the store's model is not the run's export (``ptflow.runs.logged_model_check``)."""
    import mlflow

    from ptflow.runs.logged_model_check import Untrusted, check_logged_model
    from ptflow.runs.mlflow_calls import mlflow_quiet
    from ptflow.runs.mlflow_models import global_tracking_uri

    models = dict(row.model_uris)
    fmt = next((f for f in ("pt2", "onnx") if f in models), None)
    if fmt is None:
        raise Refused(f"run {row.run_id} logged no MLflow model (tag ptflow.model.pt2 / ptflow.model.onnx): "
                      "export pt2 or onnx with tracking.log_models=true, or register by hand")
    tags = {"ptflow.run_id": row.run_id, "ptflow.recipe": row.name, "ptflow.speedup_p50": f"{row.speedup:.4g}",
            "ptflow.accuracy_drop": f"{row.drop:.6g}"}
    try:   # the store's model must be the file the run exported: anyone with write access could swap it
        check_logged_model(mlflow.MlflowClient(tracking_uri), row.run_id, models[fmt], fmt)
    except Untrusted as error:
        raise Refused(f"not registering {models[fmt]} ({fmt}) of run {row.run_id}: {error}. The store's copy is not "
                      "what this run exported and logged; re-run the recipe (ptflow-reproduce "
                      f"{row.run_id}) and register the new run") from None
    with global_tracking_uri(tracking_uri), mlflow_quiet():   # MLflow's own "Successfully registered" lines
        version = mlflow.register_model(models[fmt], name, tags=tags, await_registration_for=0)
    return f"registered: {models[fmt]} ({fmt}) as models:/{name}/{version.version}"


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        return compare(args)
    except Refused as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except Exception as error:   # a store that stops answering half-way, a broken database
        from ptflow.core.errors import first_line

        print(f"{PROG}: the MLflow store did not answer: {type(error).__name__}: {first_line(error)}", file=sys.stderr)
        return 2


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
