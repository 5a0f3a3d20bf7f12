"""The latency / accuracy Pareto front of a sweep: which recipes no other recipe beats on both.

A recipe is a point (latency in ms: lower is better, metric delta vs the baseline: higher is
better). `frontier` is pure; `plot` draws the points, the front as a staircase and an accuracy
budget through matplotlib's Agg canvas (the helpers of ``ptflow.measure.plots``: no pyplot, no display,
the same numbers give the same bytes).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOG_AXIS_RATIO = 10.0     # a log latency axis once the slowest drawn recipe is this many times the fastest
LABEL_OFFSETS = (5, -12, 15)   # points above the marker; neighbours along x alternate
FRONT_COLOUR, OTHER_COLOUR, BUDGET_COLOUR = "#d62728", "#1f77b4", "#2ca02c"


def _usable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def frontier(points: Sequence[tuple[float | None, float | None] | None]) -> list[int]:
    """Indices (ascending) of the non-dominated points among (latency_ms, accuracy_delta).

    A point is dominated when another is no slower and no less accurate, and strictly better
    in one of the two. Exact duplicates dominate neither each other, so both stay on the
    front: two recipes that measured the same are equally good answers, and dropping one
    would hide a choice. Points with a None or non-finite coordinate are left out."""
    usable = [(i, float(p[0]), float(p[1])) for i, p in enumerate(points)
              if p is not None and _usable(p[0]) and _usable(p[1])]
    kept = []
    for i, latency, delta in usable:
        dominated = any(other_latency <= latency and other_delta >= delta
                        and (other_latency < latency or other_delta > delta)
                        for j, other_latency, other_delta in usable if j != i)
        if not dominated:
            kept.append(i)
    return kept


def plot(rows: Sequence[Any], path: Path, min_delta: float | None = None, title: str | None = None,
         empty: str | None = None) -> Path:
    """Scatter of each row's candidate p50 latency (x) against its metric delta (y).

    Rows are ``ptflow.decide.compare.Row`` (attributes name, p50_ms, delta, accepted, stability).
    Accepted recipes are filled, the others hollow; the Pareto front is red and joined by a
    staircase; `min_delta` (the budget as a delta: -max drop) is a horizontal line. Rows
    without both numbers are counted in the title, not drawn; with none at all the picture
    says so (`empty`: why there is nothing to draw, e.g. every run's timings were invalid), so a
    sweep whose jobs all failed still gets its file."""
    from ptflow.measure.plots import _figure, _save

    drawn = [row for row in rows if _usable(row.p50_ms) and _usable(row.delta)]
    figure = _figure((8.0, 5.0))
    axes = figure.add_subplot()
    left_out = len(rows) - len(drawn)
    heading = title or "Latency vs accuracy (Pareto front in red)"
    if left_out:
        heading += f"\n{left_out} run(s) without a latency and a metric delta not drawn"
    axes.set_title(heading, fontsize="medium")
    if not drawn:
        axes.text(0.5, 0.5, empty or "no finished runs with a latency and a metric delta", ha="center",
                  va="center", wrap=True, transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)
    front = set(frontier([(row.p50_ms, row.delta) for row in drawn]))
    order = {i: n for n, i in enumerate(sorted(range(len(drawn)), key=lambda i: drawn[i].p50_ms))}
    shared = _shared_head([row.name for row in drawn])   # 'digits_mlp-' on every label says nothing
    if shared:
        heading += f" · recipes of {shared.rstrip('-')}"
        axes.set_title(heading, fontsize="medium")
    for index, row in enumerate(drawn):   # neighbours' labels at staggered heights: equal deltas are common
        colour = FRONT_COLOUR if index in front else OTHER_COLOUR
        accepted = row.accepted == "true"
        axes.scatter([row.p50_ms], [row.delta], s=60, marker="o" if row.stability != "unstable" else "^",
                     facecolors=colour if accepted else "none", edgecolors=colour, linewidths=1.5, zorder=3)
        axes.annotate(row.name[len(shared):], (row.p50_ms, row.delta), textcoords="offset points", fontsize="x-small",
                      xytext=(5, LABEL_OFFSETS[order[index] % len(LABEL_OFFSETS)]), rotation=15)
    steps = sorted((drawn[i].p50_ms, drawn[i].delta) for i in front)
    axes.plot([x for x, _ in steps], [y for _, y in steps], drawstyle="steps-post", color=FRONT_COLOUR,
              linewidth=1.2, alpha=0.7, label="Pareto front")
    if min_delta is not None and _usable(min_delta):
        axes.axhline(min_delta, color=BUDGET_COLOUR, linestyle="--", linewidth=1.2,
                     label=f"budget: delta ≥ {min_delta:+.4g}")
    latencies = [row.p50_ms for row in drawn]
    if min(latencies) > 0 and max(latencies) / min(latencies) > LOG_AXIS_RATIO:
        axes.set_xscale("log")
    _legend_markers(axes)
    axes.set_xlabel("candidate p50 latency (ms, lower is better)")
    axes.set_ylabel("metric delta vs baseline (higher is better)")
    axes.margins(x=0.12, y=0.2)   # room for the labels inside the frame
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return _save(figure, path)


def _legend_markers(axes: Any) -> None:
    """Legend-only entries that say what filled, hollow and triangles mean."""
    axes.scatter([], [], s=60, facecolors="grey", edgecolors="grey", label="accepted (filled)")
    axes.scatter([], [], s=60, facecolors="none", edgecolors="grey", label="not accepted / unknown (hollow)")
    axes.scatter([], [], s=60, marker="^", facecolors="none", edgecolors="grey", label="unstable measurement")


def _shared_head(names: list[str]) -> str:
    """The '<model>-' every name starts with (up to its last '-'), when there are several names."""
    if len(names) < 2:
        return ""
    head = names[0]
    for name in names[1:]:
        while not name.startswith(head):
            head = head[:-1]
    cut = head.rfind("-")
    return head[:cut + 1] if cut > 0 and all(len(n) > cut + 1 for n in names) else ""
