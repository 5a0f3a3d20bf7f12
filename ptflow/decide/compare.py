"""Compare the runs of a sweep from MLflow: one row per run, a ranking by speedup, and the
best recipe under an accuracy budget.

Everything below `select_runs` is a pure function of MLflow run entities (or of `Row`s), so
the ranking rules are tested without a store. The rules, in one place:

* ranked: FINISHED runs with a speedup whose measurement is not ``invalid``; by speedup p50,
  every stable one before any unstable one (an unstable number never wins while a stable one
  exists);
* not ranked, listed after with their reason: invalid measurements, FAILED and KILLED runs,
  runs without a benchmark;
* tied: ranked runs whose 95% speedup intervals overlap (``ptflow.decide.ties``: the groups,
  and the marks on runs measured with fewer repeats or on another host);
* under a budget: among the qualifying runs tied with the fastest qualifying one, the smaller
  accuracy drop, then the smaller size, then the higher speedup p50 (``strict``: the fastest).
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from ptflow.decide import ties
from ptflow.decide.budget import Budget  # noqa: F401  (ptflow-compare's budget, re-exported)
from ptflow.decide.compare_select import (PARENT_ID_TAG, SelectionError, is_parent, latest_sweeps,  # noqa: F401
                                   search_all, select_runs)

NAME_PLACE = re.compile(r"\s+@\S+$")     # ' @22-10-56#7': where it ran, not what ran
STATUS_ORDER = {"invalid": 0, "no benchmark": 1, "FAILED": 2, "KILLED": 3}


@dataclass(frozen=True)
class Row:
    """What one run measured, as the comparison needs it. None: not measured or not logged."""

    run_id: str
    name: str
    status: str
    speedup: float | None = None
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p99_supported: bool | None = None
    metric: str | None = None
    delta: float | None = None
    drop: float | None = None
    baseline_metric: float | None = None
    accepted: str | None = None          # the pipeline's own accuracy gate: "true", "false" or None
    stability: str | None = None         # "stable", "unstable", "invalid" or None
    size_mb: float | None = None
    compile_s: float | None = None
    error: str = ""
    run_dir: str | None = None
    model_uris: tuple[tuple[str, str], ...] = ()   # (format, models:/ URI) from tags ptflow.model.<format>
    start_time: int = 0
    repeats: int | None = None           # fresh processes the speedup interval covers (None: not logged, 1)
    host: str | None = None              # the tag hostname: where it was measured
    ci_scope: str | None = None          # the tag benchmark.ci_scope, e.g. "3 processes"
    served_rps: float | None = None      # the tag ptflow.served.throughput_per_s (ptflow-serve --loadtest)

    @property
    def unranked_reason(self) -> str | None:
        """Why this row has no rank (None when it is ranked)."""
        if self.status != "FINISHED":
            return f"{self.status}" + (f": {self.error}" if self.error else "")
        if self.stability == "invalid":
            return "invalid measurement"
        if self.speedup is None:
            return "no benchmark (no speedup logged)"
        return None

    @property
    def state(self) -> str:
        """One word for the table: the run status when it did not finish, else the stability."""
        if self.status != "FINISHED" or self.speedup is None:
            return self.status if self.status != "FINISHED" else "no benchmark"
        return self.stability or "unknown"


def _number(metrics: dict[str, float], *keys: str) -> float | None:
    """The first of `keys` logged with a finite value (NaN and inf say nothing about a recipe)."""
    values = (metrics.get(key) for key in keys)
    return next((float(v) for v in values if v is not None and math.isfinite(float(v))), None)


def _stability(tags: dict[str, str], metrics: dict[str, float]) -> str | None:
    """The tag benchmark.stability; from the metrics when an older run lacks it."""
    if tags.get("benchmark.stability") or metrics.get("benchmark/invalid") == 1:
        return tags.get("benchmark.stability") or "invalid"
    unstable = metrics.get("benchmark/unstable")
    return None if unstable is None else ("unstable" if unstable == 1 else "stable")


def _drop(metrics: dict[str, float], params: dict[str, str], delta: float | None,
          baseline: float | None) -> float | None:
    """The drop in the metric's units: accuracy/drop when the accuracy gate logged it (direction
    applied; a relative one times |baseline|); else from the delta, a higher-is-better metric
    unless accuracy.higher_is_better says otherwise."""
    drop = _number(metrics, "accuracy/drop")
    relative = metrics["accuracy/relative"] == 1 if "accuracy/relative" in metrics else \
        params.get("accuracy.mode") == "relative"   # runs from before accuracy/relative was logged
    if "accuracy/drop" in metrics and relative:
        return None if drop is None or baseline is None else drop * abs(baseline)
    if drop is not None or delta is None:
        return drop
    return delta if params.get("accuracy.higher_is_better", "").lower() == "false" else -delta


def row_from_run(run: Any) -> Row:
    """A Row from an MLflow Run entity (any of its metrics may be missing)."""
    tags, metrics, params = dict(run.data.tags), dict(run.data.metrics), dict(run.data.params)
    metric = params.get("data.metric") or None
    delta = _number(metrics, f"benchmark/{metric}_delta") if metric else None
    baseline = _number(metrics, f"validate/{metric}") if metric else None
    supported = metrics.get("benchmark/candidate.p99_supported")
    name = NAME_PLACE.sub("", run.info.run_name or tags.get("mlflow.runName", "")) or run.info.run_id[:8]
    return Row(
        run_id=run.info.run_id, name=name, status=run.info.status,
        speedup=_number(metrics, "benchmark/speedup_p50"),
        speedup_ci_low=_number(metrics, "benchmark/speedup_ci_low"),
        speedup_ci_high=_number(metrics, "benchmark/speedup_ci_high"),
        p50_ms=_number(metrics, "benchmark/candidate.p50_ms"), p99_ms=_number(metrics, "benchmark/candidate.p99_ms"),
        p99_supported=None if supported is None else bool(supported),
        metric=metric, delta=delta, drop=_drop(metrics, params, delta, baseline), baseline_metric=baseline,
        accepted=tags.get("accepted"), stability=_stability(tags, metrics),
        size_mb=_number(metrics, "export/size_mb", "quantize/size_mb", "load/size_mb"),
        compile_s=_number(metrics, "compile/compile_s"),
        error=next(iter((tags.get("ptflow.error") or "").strip().splitlines()), "")[:200],
        run_dir=tags.get("ptflow.run_dir"),
        model_uris=tuple(sorted((k.split(".", 2)[2], v) for k, v in tags.items() if k.startswith("ptflow.model."))),
        start_time=run.info.start_time or 0, repeats=_repeats(metrics), host=tags.get("hostname") or None,
        ci_scope=tags.get("benchmark.ci_scope") or None, served_rps=_served(tags))


def _served(tags: dict[str, str]) -> float | None:
    try:
        return float(tags["ptflow.served.throughput_per_s"])
    except (KeyError, ValueError):
        return None


def _repeats(metrics: dict[str, float]) -> int | None:
    value = _number(metrics, "benchmark/repeats")
    return None if value is None else int(value)


def rows_from_runs(runs: Sequence[Any]) -> list[Row]:
    """Rows with unique names: where two runs share a name (a sweep over a key that no run
    name shows), the later ones get their job number or run id prefix appended."""
    rows = [row_from_run(run) for run in runs]
    jobs = {run.info.run_id: run.data.tags.get("ptflow.job_num") for run in runs}
    seen = Counter(row.name for row in rows)
    return [row if seen[row.name] == 1 else replace(row, name=f"{row.name} #{jobs[row.run_id]}" if jobs[row.run_id]
                                                    else f"{row.name} ({row.run_id[:8]})") for row in rows]


def speedup_ci(row: Row) -> str:
    both = row.speedup_ci_low is not None and row.speedup_ci_high is not None
    return f" [{row.speedup_ci_low:.2f}, {row.speedup_ci_high:.2f}]" if both else ""


def rank(rows: Sequence[Row]) -> list[tuple[int | None, Row]]:
    """(rank from 1, row) for ranked rows, by speedup p50 (a rank says "measured faster than the
    next"; an unstable one is marked, never tied with a stable one, and picked only when no
    stable run qualifies) — then (None, row) for the rest: invalid, no benchmark, FAILED,
    KILLED, each by start time."""
    ranked = sorted((r for r in rows if r.unranked_reason is None), key=lambda r: (-r.speedup, r.name))
    rest = sorted((r for r in rows if r.unranked_reason is not None),
                  key=lambda r: (STATUS_ORDER.get(r.state, 4), r.start_time, r.name))
    return [(i + 1, r) for i, r in enumerate(ranked)] + [(None, r) for r in rest]


class Pick(NamedTuple):
    """The best row under a budget (None if none qualifies), what to tell the user, and why
    this row among the tied ones (``ties.why``)."""
    row: Row | None
    message: str
    warning: str = ""
    reason: str = ""


def pick(rows: Sequence[Row], budget: Budget, strict: bool = False) -> Pick:
    """Among the qualifying rows tied with the fastest qualifying one (95% speedup intervals
    overlap, ``ties``), the smaller accuracy drop, then the smaller size, then the higher
    speedup p50: a measurement that cannot tell two recipes apart should not decide between
    them when accuracy or size can. `strict`: the fastest qualifying row, intervals ignored.
    If only unstable runs qualify, the best of them is still picked (it is the best evidence
    there is) with a warning to measure again."""
    ranked = [row for number, row in rank(rows) if number is not None]
    qualifying = [row for row in ranked if budget.qualifies(row)]
    # a stable run is picked over any unstable one; the unstable ones only when none is stable
    pool = [row for row in qualifying if row.stability != "unstable"] or qualifying
    contenders = ties.contenders(pool, strict) if pool else []
    best = ties.choose(contenders) if contenders else None   # contenders[0] with strict
    shown = budget.text or f"{budget.value:g}"
    if best is not None:
        limit = budget.limit(best)
        faster = [row for row in qualifying if row.stability == "unstable" and (row.speedup or 0) > (best.speedup or 0)]
        warning = "" if best.stability != "unstable" else (
            f"warning: no stable run qualifies and {best.name}'s measurement is unstable: measure it again "
            "(more benchmark iterations) before trusting its speedup")
        if faster and not warning:
            warning = (f"note: {', '.join(f'{r.name} ({r.speedup:.2f}x)' for r in faster)} measured faster within "
                       "the budget but unstable, so not picked; measure again (benchmark=rigorous, a quieter "
                       "machine) before ruling them out")
        invalid = [row for row in rows if row.status == "FINISHED" and row.stability == "invalid"
                   and row.speedup is not None and row.speedup > (best.speedup or 0) and budget.within(row)]
        if invalid:
            warning = "\n".join(filter(None, [warning, (
                f"note: {', '.join(f'{r.name} ({r.speedup:.2f}x)' for r in invalid)} printed a higher speedup within "
                "the budget, but its timings were invalid (not a measurement: the machine was too busy), so it is "
                "neither ranked nor picked; measure it again on a quieter machine before ruling it out")]))
        return Pick(best, f"best within a drop of {shown} (≤ {limit:.6g} {best.metric or ''}): {best.name}", warning,
                    ties.why(best, contenders, strict))
    return Pick(None, _why_none(rows, ranked, budget, shown))


def _why_none(rows: Sequence[Row], ranked: Sequence[Row], budget: Budget, shown: str) -> str:
    unranked = len(rows) - len(ranked)
    aside = f" ({unranked} other run(s) not ranked: failed, killed, invalid or without a benchmark)" if unranked else ""
    if not ranked:
        return f"no run qualifies: none of {len(rows)} run(s) is a finished, valid benchmark{aside}"
    measured = [row for row in ranked if row.drop is not None and budget.limit(row) is not None]
    if not measured:
        what = "a baseline metric (needed by a % budget)" if budget.relative else "an accuracy drop"
        return f"no run qualifies: none of {len(ranked)} ranked run(s) logged {what}{aside}"
    closest = min(measured, key=lambda row: row.drop - budget.limit(row))
    return (f"no run qualifies: none of {len(ranked)} ranked run(s) drops ≤ {shown}"
            + (f" (= {budget.limit(closest):.6g})" if budget.relative else "")
            + f"; the closest is {closest.name} (drop {closest.drop:.6g}, run {closest.run_id}){aside}")


# ---- reports: the terminal table, compare.csv, compare.md, pareto.png ---------------------------

COLUMNS = ("rank", "recipe", "speedup p50 [CI]", "tied", "p50 ms", "p99 ms", "metric Δ", "accepted", "size MB",
           "compile s", "state", "run id")
CSV_FIELDS = ("rank", "recipe", "run_id", "status", "stability", "speedup_p50", "speedup_ci_low", "speedup_ci_high",
              "p50_ms", "p99_ms", "p99_supported", "metric", "metric_delta", "accuracy_drop", "baseline_metric",
              "accepted", "size_mb", "compile_s", "pareto", "unranked_reason", "run_dir", "model_uris", "tied_with",
              "repeats", "host", "ci_scope", "marks", "served_throughput_per_s")
FOOTNOTES = ("~ unstable measurement: ranked by its speedup, never tied with a stable one, picked only if no "
             "stable run qualifies", "* p99 from too few samples to support it")


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def cells(number: int | None, row: Row, run_id: str, tie: str = "", marks: str = "") -> tuple[str, ...]:
    """One row's table cells (terminal and Markdown): `tie` its tied cell, `marks` † / ‡ after its speedup."""
    speedup = "" if row.speedup is None else \
        f"{row.speedup:.2f}x{speedup_ci(row)}" + "~" * (row.stability == "unstable") + marks
    p99 = _fmt(row.p99_ms, ".3f") + ("*" if _thin_p99(row) else "")
    return ("—" if number is None else str(number), row.name, speedup, tie, _fmt(row.p50_ms, ".3f"), p99,
            _fmt(row.delta, "+.4f"), row.accepted or "", _fmt(row.size_mb, ".2f"), _fmt(row.compile_s, ".1f"),
            row.state, run_id)


def _thin_p99(row: Row) -> bool:
    return row.p99_ms is not None and row.p99_supported is False


class Table(NamedTuple):
    """The comparison as the terminal and compare.md show it: rank() order, each row's cells,
    and the notes under the table (only those its cells use)."""
    ranked: list[tuple[int | None, Row]]
    cells: list[tuple[str, ...]]
    notes: list[str]
    leader_of: dict[str, int]            # run id -> its tie group's leader's rank (ties.tie_groups)
    marks: ties.Marks


def table(rows: Sequence[Row], run_id_of: Any = lambda row: row.run_id, strict: bool = False) -> Table:
    """`run_id_of(row)`: the run id cell (short in the terminal, full in Markdown). `strict`: no ties."""
    ranked = rank(rows)
    order = [row for number, row in ranked if number is not None]
    leader_of = {} if strict else ties.tie_groups(order)
    marks = ties.measurement_marks(order)
    rows_cells = [cells(n, row, run_id_of(row), ties.tie_cell(row, leader_of, strict) if n is not None else "",
                        marks.by_run.get(row.run_id, "")) for n, row in ranked]
    used = {FOOTNOTES[0]: any(row.stability == "unstable" for row in order),
            FOOTNOTES[1]: any(_thin_p99(row) for _, row in ranked)}
    notes = [note for note, shown in used.items() if shown] + ties.tie_legend(order, leader_of, strict) + marks.legend
    notes += [f"served: {row.name}: {row.served_rps:.0f} req/s at best (ptflow-serve --loadtest)"
              for _, row in ranked if row.served_rps is not None]
    return Table(ranked, rows_cells, notes, leader_of, marks)


def _markdown(rows: Sequence[Row], strict: bool = False) -> str:
    shown = table(rows, lambda row: f"`{row.run_id}`", strict)
    escape = str.maketrans({"|": "\\|"})
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.translate(escape) for c in line) + " |" for line in shown.cells]
    notes = [f"- not ranked: {row.name}: {row.unranked_reason}" for n, row in shown.ranked if n is None]
    return "\n".join(lines + [""] + [f"{note}  " for note in shown.notes] + ([""] + notes if notes else [])) + "\n"


def _csv(rows: Sequence[Row], strict: bool = False) -> str:
    front = {rows[i].run_id for i in frontier_of(rows)}
    shown = table(rows, strict=strict)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for number, r in shown.ranked:
        writer.writerow(["" if v is None else v for v in (
            number, r.name, r.run_id, r.status, r.stability, r.speedup, r.speedup_ci_low, r.speedup_ci_high, r.p50_ms,
            r.p99_ms, r.p99_supported, r.metric, r.delta, r.drop, r.baseline_metric, r.accepted, r.size_mb,
            r.compile_s, r.run_id in front, r.unranked_reason or "", r.run_dir,
            " ".join(f"{fmt}={uri}" for fmt, uri in r.model_uris), shown.leader_of.get(r.run_id),
            r.repeats, r.host, r.ci_scope, shown.marks.words.get(r.run_id), r.served_rps)])
    return text.getvalue()


def frontier_of(rows: Sequence[Row]) -> list[int]:
    """Indices of the rows on the latency / accuracy Pareto front (finished, valid ones only)."""
    from ptflow.decide.pareto import frontier

    return frontier([(r.p50_ms, r.delta) if r.unranked_reason is None else None for r in rows])


def nothing_ranked(rows: Sequence[Row]) -> str:
    """Why no run can be drawn or ranked, counted by reason ('8 run(s): invalid measurement')."""
    if not rows:
        return "no runs in this comparison"
    reasons = Counter((row.unranked_reason or "").split(":")[0] for row in rows)
    text = "; ".join(f"{count} run(s): {reason}" for reason, count in reasons.most_common())
    if reasons.get("invalid measurement"):
        text += "\n(timings too dispersed to be a measurement: measure again on a quieter machine)"
    return "nothing ranked: " + text


def write_reports(rows: Sequence[Row], out_dir: Path, budget: Budget | None = None, strict: bool = False) -> list[Path]:
    """compare.csv (full precision, full run ids), compare.md and pareto.png in `out_dir`;
    `strict`: ties left out, as ``--strict`` prints the table."""
    from ptflow.core.files import write_atomic
    from ptflow.decide.pareto import plot

    (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "compare.csv", _csv(rows, strict))
    write_atomic(out_dir / "compare.md", _markdown(rows, strict))
    drawn = [row for row in rows if row.unranked_reason is None]
    plot(drawn, out_dir / "pareto.png", min_delta=budget.min_delta(drawn) if budget else None,
         empty=None if drawn else nothing_ranked(rows))
    return [out_dir / "compare.csv", out_dir / "compare.md", out_dir / "pareto.png"]


def children(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The job runs nested under a sweep's parent run (parent runs never count)."""
    return [run for run in search_all(client, experiment_id, f"tags.{PARENT_ID_TAG} = '{parent_run_id}'")
            if not is_parent(run)]


def sweep_artifacts(tracking_uri: str, experiment_id: str, parent_run_id: str, out_dir: Path) -> list[Path]:
    """The comparison of a sweep's children. A sweep whose jobs all failed, or that has no
    child yet, still gets its CSV, Markdown and a PNG saying so; store errors (a dead server)
    propagate for the caller to report."""
    from mlflow.tracking import MlflowClient

    runs = children(MlflowClient(tracking_uri=tracking_uri), experiment_id, parent_run_id)
    return write_reports(rows_from_runs(runs), Path(out_dir))
