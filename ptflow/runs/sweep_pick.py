"""A sweep's pick, kept on its parent MLflow run where users look.

* the description (tag ``mlflow.note.content``, rendered as Markdown on the run page): the
  recipe picked under the sweep's accuracy budget on top (its speedup with the CI, its accuracy
  delta, links to its run and models, why it among tied ones), then every run ranked;
* tags ``ptflow.best_run_id`` and ``ptflow.best_recipe`` (columns of the runs table), the
  budget (``ptflow.pick.budget``) and who picked (``ptflow.pick.by``);
* metrics ``best/speedup_p50``, ``best/speedup_ci_low``, ``best/speedup_ci_high``,
  ``best/accuracy_drop``, ``best/metric_delta`` (NaN once a later pick finds none).

Written when the sweep ends, under ``compare.max_accuracy_drop`` or else the jobs'
``accuracy.max_drop``; ``ptflow-compare --max-accuracy-drop X`` replaces all of it.
"""
from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from ptflow.decide import budget as budgets
from ptflow.decide import compare as cmp
from ptflow.runs import ui_links
from ptflow.runs.description import NOTE_TAG

BEST_RUN_TAG, BEST_RECIPE_TAG = "ptflow.best_run_id", "ptflow.best_recipe"
BUDGET_TAG, PICKED_BY_TAG = "ptflow.pick.budget", "ptflow.pick.by"
BEST_METRICS = ("best/speedup_p50", "best/speedup_ci_low", "best/speedup_ci_high", "best/accuracy_drop",
                "best/metric_delta")
NOTE_CHARS = 5000            # MLflow 2 servers keep 5000 characters of a tag (3.x: 8000)
SHOWN = (0, 1, 2, 3, 6, 7, 10, 4, 11)   # of compare.COLUMNS: rank, recipe, speedup, tied, Δ, accepted, state, p50, run
HEADS = ("#", "recipe", "speedup p50 [95% CI]", "tied", "metric Δ", "accepted", "state", "p50 ms", "run")


PLAIN = str.maketrans({"<": "&lt;", ">": "&gt;", "[": "\\[", "]": "\\]", "`": "'", "\n": " ", "\r": " "})


def plain(text: str) -> str:
    """Text from the store (run names, errors, tags) made inert in Markdown: no HTML, no link,
    no code span it could open or close, one line (a table cell escapes its own '|')."""
    return text.translate(PLAIN)


def _plain_row(row: cmp.Row) -> cmp.Row:
    return replace(row, name=plain(row.name), error=plain(row.error), metric=row.metric and plain(row.metric))


class Picked(NamedTuple):
    """What was recorded: the pick (None: no run qualifies, or no budget) and a line for the terminal."""
    choice: cmp.Pick | None
    line: str


def _recipe(runs: Sequence[Any], row: cmp.Row) -> str:
    run = next((r for r in runs if r.info.run_id == row.run_id), None)
    return (run.data.tags.get("recipe") if run is not None else None) or row.name


def _links(experiment_id: str, row: cmp.Row) -> str:
    models = ", ".join(f"[{fmt}]({ui_links.model_path(experiment_id, uri.removeprefix('models:/'))})"
                       for fmt, uri in row.model_uris)
    return (f"run [`{row.run_id[:8]}`]({ui_links.run_path(experiment_id, row.run_id)})"
            + (f" · logged models: {models}" if models else ""))


def _pick_section(choice: cmp.Pick | None, found: tuple[budgets.Budget, str] | None, recipe: str,
                  experiment_id: str) -> list[str]:
    if found is None:
        return ["## No pick: no accuracy budget",
                "The jobs ran without an accuracy gate (accuracy.max_drop: null) and no compare.max_accuracy_drop "
                "was set: run `ptflow-compare --max-accuracy-drop X` to pick here."]
    budget, source = found
    if choice is None or choice.row is None:
        message = choice.message if choice is not None else ""
        return [f"## No pick within a drop of {budget.text}", message.replace("no run qualifies: ", "No run qualifies: ")]
    row = choice.row
    figures = [f"**{row.speedup:.2f}x**{cmp.speedup_ci(row)}" + (f" ({row.ci_scope})" if row.ci_scope else "")]
    if row.delta is not None:
        figures.append(f"{row.metric} Δ {row.delta:+.4f} (drop {row.drop:.4g} ≤ {budget.limit(row):.4g})")
    figures += [f"timings {row.stability or 'of unknown stability'}"]
    if row.p50_ms is not None:
        figures.append(f"p50 {row.p50_ms:.3f} ms")
    lines = [f"## Pick: **{plain(recipe)}** (within a drop of {budget.text}, from {source})", " · ".join(figures),
             _links(experiment_id, row)]
    if choice.reason:
        lines.append(f"Why this one: {choice.reason}")
    lines += [f"> {warning}" for warning in choice.warning.splitlines() if warning]
    lines.append(f"Get it again: `ptflow-reproduce {row.run_id}`")
    return lines


def _table(rows: Sequence[cmp.Row], experiment_id: str, strict: bool, room: int) -> list[str]:
    shown = cmp.table(rows, lambda row: f"[`{row.run_id[:8]}`]({ui_links.run_path(experiment_id, row.run_id)})",
                      strict)
    escape = str.maketrans({"|": "\\|"})
    lines = ["| " + " | ".join(HEADS) + " |", "|" + "---|" * len(HEADS)]
    body = ["| " + " | ".join(cells[i].translate(escape) for i in SHOWN) + " |" for cells in shown.cells]
    unranked = [f"- not ranked: {row.name}: {row.unranked_reason}"[:300] for n, row in shown.ranked if n is None]
    notes = [f"- {note}" for note in shown.notes if not note.startswith("* ")] + unranked[:8] + \
        ([f"- … {len(unranked) - 8} more not ranked"] if len(unranked) > 8 else [])
    title = f"### {len(rows)} run(s), ranked by speedup"
    left = room - sum(len(x) + 1 for x in [title, *lines, "", *notes]) - 80   # 80: the "more" line
    kept: list[str] = []
    for line in body:
        if len(line) + 1 > left:
            break
        kept.append(line)
        left -= len(line) + 1
    cut = len(body) - len(kept)
    more = [f"- … {cut} more row(s): see the artifact compare/compare.md"] if cut else []
    return [title, *lines, *kept, "", *notes, *more]


def describe(parent: Any, runs: Sequence[Any], rows: Sequence[cmp.Row], found: tuple[budgets.Budget, str] | None,
             choice: cmp.Pick | None, by: str, strict: bool = False) -> str:
    """The parent run's description (Markdown, at most NOTE_CHARS)."""
    eid = parent.info.experiment_id
    recipe = _recipe(runs, choice.row) if choice is not None and choice.row is not None else ""
    head = "\n\n".join(_pick_section(choice, found, recipe, eid))
    metrics, tags = parent.data.metrics, parent.data.tags
    counts = ", ".join(f"{int(metrics[f'sweep/{k}'])} {k}" for k in ("finished", "failed", "killed")
                       if f"sweep/{k}" in metrics)
    foot = (f"_{by}. `ptflow-compare --parent {parent.info.run_id} --max-accuracy-drop X` picks again under "
            f"another budget and replaces this description, the tags {BEST_RUN_TAG} / {BEST_RECIPE_TAG} and the "
            "best/* metrics._\n\n"
            f"Sweep: `{plain(tags.get('ptflow.command', 'ptflow -m')[:600])}`" + (f" · {counts}" if counts else "")
            + " · full table: artifacts compare/compare.md, compare.csv, pareto.png")
    room = NOTE_CHARS - len(head) - len(foot) - 8
    return "\n\n".join([head, "\n".join(_table(rows, eid, strict, room)), foot])[:NOTE_CHARS]


def record(client: Any, parent_run_id: str, runs: Sequence[Any], found: tuple[budgets.Budget, str] | None,
           by: str, strict: bool = False) -> Picked:
    """Pick under `found` (budget, its source) among `runs` (the sweep's job runs) and write the
    pick onto the parent run; store errors propagate."""
    from mlflow.entities import Metric, RunTag

    parent = client.get_run(parent_run_id)
    rows = [_plain_row(row) for row in cmp.rows_from_runs(runs)]   # any store writer may have named them
    choice = cmp.pick(rows, found[0], strict) if found is not None else None
    now = int(time.time() * 1000)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    by = f"{by}, {stamp}"
    tags = {NOTE_TAG: describe(parent, runs, rows, found, choice, by, strict), PICKED_BY_TAG: by[:5000],
            BUDGET_TAG: f"{found[0].text} ({found[1]})" if found else "none"}
    best = choice.row if choice is not None else None
    values = (None,) * len(BEST_METRICS) if best is None else \
        (best.speedup, best.speedup_ci_low, best.speedup_ci_high, best.drop, best.delta)
    # a figure this pick lacks is NaN where a former pick logged one: its value no longer holds
    metrics = {k: float("nan") if v is None else float(v) for k, v in zip(BEST_METRICS, values)
               if v is not None or k in parent.data.metrics}
    if best is not None:
        tags[BEST_RUN_TAG], tags[BEST_RECIPE_TAG] = best.run_id, _recipe(runs, best)[:5000]
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    if best is None:
        for key in (BEST_RUN_TAG, BEST_RECIPE_TAG):
            if key in parent.data.tags:
                client.delete_tag(parent_run_id, key)
    return Picked(choice, _line(choice, found, best, runs))


def _line(choice: cmp.Pick | None, found: tuple[budgets.Budget, str] | None, best: cmp.Row | None,
          runs: Sequence[Any]) -> str:
    if found is None:
        return ("no pick: the sweep has no accuracy budget (accuracy.max_drop: null, no compare.max_accuracy_drop); "
                "ptflow-compare --max-accuracy-drop X picks one and records it on the parent run")
    if best is None:
        return (choice.message if choice is not None else "no pick") + f" (budget {found[0].text} from {found[1]}; " \
            "the parent run's description says so)"
    delta = "" if best.delta is None else f", {best.metric} Δ {best.delta:+.4f}"
    return (f"pick within a drop of {found[0].text} ({found[1]}): {_recipe(runs, best)} {best.speedup:.2f}x"
            f"{cmp.speedup_ci(best)}{delta} (run {best.run_id}); recorded on the parent run (description, tags "
            f"{BEST_RUN_TAG} and {BEST_RECIPE_TAG})")


def sweep_parent(client: Any, runs: Sequence[Any]) -> Any | None:
    """The parent run (entity) all `runs` are nested under, when they share one ptflow sweep parent."""
    from ptflow.decide.compare_select import PARENT_ID_TAG, is_parent

    ids = {run.data.tags.get(PARENT_ID_TAG) for run in runs}
    if len(ids) != 1 or None in ids:
        return None
    try:
        parent = client.get_run(ids.pop())
    except Exception:   # a tag pointing at a deleted or foreign run
        return None
    return parent if is_parent(parent) else None


def repick(client: Any, parent: Any, runs: Sequence[Any], budget: budgets.Budget, strict: bool) -> str:
    """`ptflow-compare --max-accuracy-drop`'s pick over a whole sweep, written onto its parent
    run in place of the one there; the line saying so (a warning when the store refuses)."""
    from ptflow.core.errors import first_line

    before = parent.data.tags.get(BUDGET_TAG)
    flags = f"--max-accuracy-drop {budget.text}" + (" --strict" if strict else "")
    try:
        record(client, parent.info.run_id, runs, (budget, "ptflow-compare"), f"picked by ptflow-compare {flags}",
               strict)
    except Exception as error:
        return (f"warning: the pick was not recorded on the sweep's parent run {parent.info.run_id}: "
                f"{type(error).__name__}: {first_line(error)}")
    return (f"recorded on the sweep's parent run {parent.info.run_id}: its description, tags {BEST_RUN_TAG} / "
            f"{BEST_RECIPE_TAG} and metrics best/* now hold this pick"
            + (f" (replacing the pick under {before})" if before else ""))
