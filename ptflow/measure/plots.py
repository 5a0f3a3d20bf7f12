"""Pictures and raw tables of latency samples: PNGs for the MLflow run, a CSV of every sample.

Pure functions of the numbers they are given. matplotlib is imported inside them (it costs
start-up time the CLI must not pay) and drawn through its Agg canvas directly: no pyplot, no
global backend switch, nothing left open. Files are written atomically, and the PNG carries
no matplotlib version stamp, so the same numbers give the same bytes.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ptflow.core.files import write_atomic

ROW_KEYS = ("batch_size", "role", "p50_ms")   # what latency_vs_batch needs of every row
BINS = 40
OUTLIER_IQRS = 3.0        # samples above p75 + this many IQRs are counted in the legend, not drawn
LOG_AXIS_RATIO = 20.0     # log-spaced bins once the largest drawn sample is this many times the smallest
DPI = 100


def samples_csv(sizes: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Every timed sample as one CSV row: batch_size, role, index, ms (and calls_per_sample,
    ran_first when the records give them).

    `sizes`: one record per batch size, as benchmark writes to latency_samples.json:
    batch_size, samples_ms (role -> ms per call of each sample; index i = pair i), optional
    calls_per_sample (role -> calls a sample averages: the timing block) and order (the roles'
    order in even pairs; odd pairs run reversed)."""
    for number, record in enumerate(sizes):
        missing = [key for key in ("batch_size", "samples_ms") if key not in record]
        if missing:
            raise ValueError(f"samples record {number} lacks {', '.join(missing)} (got {sorted(record)}): each needs "
                             "batch_size and samples_ms (role -> ms per sample)")
    blocks = any("calls_per_sample" in record for record in sizes)
    ordered = any("order" in record for record in sizes)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["batch_size", "role", "index", "ms"] + (["calls_per_sample"] if blocks else [])
                    + (["ran_first"] if ordered else []))
    for record in sizes:
        order = list(record.get("order", ()))
        for role, values in record["samples_ms"].items():
            for index, value in enumerate(values):
                row = [int(record["batch_size"]), role, index, repr(float(value))]
                if blocks:
                    row.append(record.get("calls_per_sample", {}).get(role, ""))
                if ordered:
                    pair = order if index % 2 == 0 else order[::-1]
                    row.append(int(pair[0] == role) if pair else "")
                writer.writerow(row)
    write_atomic(path, text.getvalue())
    return path


def latency_histogram(samples_ms: Mapping[str, Sequence[float]], path: Path, title: str | None = None) -> Path:
    """Overlaid histograms of each role's per-call latency (shared bins), its median marked.
    Far outliers (above p75 + 3 x IQR of their role) are left out of the drawing and counted
    in the legend, so one stall does not squeeze every bar into one column."""
    roles = {role: [float(v) for v in values] for role, values in samples_ms.items() if len(values)}
    if not roles:
        raise ValueError("latency_histogram needs at least one role with samples")
    low = min(min(values) for values in roles.values())
    high = max(_outlier_fence(values) for values in roles.values())
    log_axis = low > 0 and high / low >= LOG_AXIS_RATIO
    edges = _edges(low, high, log_axis)
    figure = _figure((7.0, 4.2))
    axes = figure.add_subplot()
    for colour, (role, values) in zip(itertools.cycle(_COLOURS), roles.items()):
        drawn = [v for v in values if v <= high]
        left_out = len(values) - len(drawn)
        median = statistics.median(values)
        label = f"{role}: p50 {median:.4g} ms, n={len(values)}"
        if left_out:
            label += f", {left_out} outlier(s) > {high:.4g} ms not drawn"
        axes.hist(drawn, bins=edges, alpha=0.55, color=colour, label=label)
        axes.axvline(median, color=colour, linestyle="--", linewidth=1.2)
    if log_axis:
        axes.set_xscale("log")
    axes.set_xlabel("latency per call (ms)")
    axes.set_ylabel("calls")
    axes.set_title(title or "Latency per call")
    axes.legend(fontsize="small")
    return _save(figure, path)


def latency_vs_batch(rows: Sequence[Mapping[str, Any]], path: Path, title: str | None = None) -> Path:
    """Median latency (left) and throughput (right) against batch size, one line per role.

    Each row (benchmark's batch_sizes.json rows fit as they are): batch_size, role, p50_ms;
    optional p90_ms (a band from p50 to p90), p50_ci_low_ms and p50_ci_high_ms (error bars:
    the median's CI), throughput_per_s (default: batch_size / p50)."""
    if not rows:
        raise ValueError("latency_vs_batch needs at least one row")
    for number, row in enumerate(rows):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"row {number} lacks {', '.join(missing)}: each row needs {', '.join(ROW_KEYS)} "
                             f"(got {sorted(row)})")
        if not float(row["p50_ms"]) > 0 or int(row["batch_size"]) < 1:
            raise ValueError(f"row {number}: batch_size must be >= 1 and p50_ms > 0, "
                             f"got {row['batch_size']!r} and {row['p50_ms']!r}")
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_role.setdefault(str(row["role"]), []).append(row)
    figure = _figure((10.0, 4.2))
    latency, throughput = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for colour, (role, points) in zip(itertools.cycle(_COLOURS), by_role.items()):
        points = sorted(points, key=lambda r: int(r["batch_size"]))
        sizes = [int(r["batch_size"]) for r in points]
        p50 = [float(r["p50_ms"]) for r in points]
        latency.plot(sizes, p50, marker="o", color=colour, label=f"{role} p50")
        if all("p90_ms" in r for r in points):
            latency.fill_between(sizes, p50, [float(r["p90_ms"]) for r in points], color=colour, alpha=0.2,
                                 label=f"{role} p50–p90")
        if all("p50_ci_low_ms" in r and "p50_ci_high_ms" in r for r in points):
            below = [m - float(r["p50_ci_low_ms"]) for m, r in zip(p50, points)]
            above = [float(r["p50_ci_high_ms"]) - m for m, r in zip(p50, points)]
            latency.errorbar(sizes, p50, yerr=[below, above], fmt="none", ecolor=colour, capsize=3)
        rates = [float(r.get("throughput_per_s") or int(r["batch_size"]) / (float(r["p50_ms"]) / 1e3))
                 for r in points]
        throughput.plot(sizes, rates, marker="o", color=colour, label=role)
    sizes_drawn = sorted({int(row["batch_size"]) for row in rows})
    for axes in (latency, throughput):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes_drawn, [str(size) for size in sizes_drawn])
        axes.minorticks_off()
        axes.set_xlabel("batch size")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    latency.set_ylabel("latency per call (ms)")
    latency.set_title("Median latency (band: to p90; bars: CI of the median)", fontsize="medium")
    throughput.set_ylabel("samples per second (at p50)")
    throughput.set_title("Throughput", fontsize="medium")
    figure.suptitle(title or "Latency and throughput vs batch size")
    return _save(figure, path)


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")   # baseline, candidate, ...


def _outlier_fence(values: Sequence[float]) -> float:
    """The largest sample at or below p75 + OUTLIER_IQRS x IQR."""
    if len(values) < 2:
        return max(values)
    p25, _, p75 = statistics.quantiles(values, n=4, method="inclusive")   # numpy's linear percentiles
    fence = p75 + OUTLIER_IQRS * (p75 - p25)
    return max(v for v in values if v <= fence)


def _edges(low: float, high: float, log_axis: bool) -> list[float]:
    if high <= low:   # every sample equal: one narrow bin around the value
        pad = abs(low) * 0.01 or 0.01
        return [low - pad, high + pad]
    if log_axis:
        step = math.log(high / low) / BINS
        return [low * math.exp(step * i) for i in range(BINS + 1)]
    return [low + (high - low) * i / BINS for i in range(BINS + 1)]


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)   # attaches itself: savefig renders through Agg, whatever pyplot's backend
    return figure


def _save(figure, path: Path) -> Path:
    """PNG bytes without the 'Software: matplotlib x.y' stamp, written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    figure.clear()
    write_atomic(path, buffer.getvalue())
    return path


def draw(request: Mapping[str, Any]) -> list[Path]:
    """The pictures `request` names: ``{"histogram": {"samples_ms": ..., "path": ...},
    "latency_vs_batch": {"rows": [...], "path": ...}}`` (either may be absent)."""
    drawn = []
    if "histogram" in request:
        drawn.append(latency_histogram(request["histogram"]["samples_ms"], Path(request["histogram"]["path"])))
    if "latency_vs_batch" in request:
        drawn.append(latency_vs_batch(request["latency_vs_batch"]["rows"], Path(request["latency_vs_batch"]["path"])))
    return drawn


def main() -> None:
    """``python -m ptflow.measure.plots REQUEST.json`` draws the pictures the request names
    (``draw``): the benchmark stage draws in a process of its own while the run goes on."""
    import json
    import sys

    request = Path(sys.argv[1])
    text = request.read_text(encoding="utf-8")
    request.unlink(missing_ok=True)   # read once: nothing left in the temp dir when no one waits for it
    draw(json.loads(text))


if __name__ == "__main__":
    main()
