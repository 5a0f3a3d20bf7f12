"""The load test's picture: throughput and p99 latency against concurrency, one line per
server set-up ("batching on", "batching off", "mlflow models serve", ...).

matplotlib is imported inside :func:`plot_loadtest` (Agg backend, no display), so importing
this module costs nothing; the PNG is written to a temp name and moved into place, so a
reader never sees half a file.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from ptflow.serve.loadgen import LevelResult


def _y(value: float | None) -> float:
    return math.nan if value is None else float(value)   # a level with no OK request: a gap


def plot_loadtest(results_by_label: Mapping[str, Sequence[LevelResult]], path: Path, title: str) -> Path:
    """One PNG, two panels: inferences/s and p99 ms against concurrency (log2 axis, the
    measured levels labelled). Returns ``path``."""
    if not any(results_by_label.values()):
        raise ValueError("plot_loadtest: no results to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    path = Path(path)
    levels = sorted({r.concurrency for results in results_by_label.values() for r in results})
    fig, (ax_tp, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        for label, results in results_by_label.items():
            rows = sorted(results, key=lambda r: r.concurrency)
            xs = [r.concurrency for r in rows]
            ax_tp.plot(xs, [r.throughput_per_s for r in rows], marker="o", label=label)
            ax_p99.plot(xs, [_y(r.p99_ms) for r in rows], marker="o", label=label)
        for ax, ylabel in ((ax_tp, "throughput (inferences/s)"), (ax_p99, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(levels))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("concurrency (requests in flight)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        ax_tp.set_title("throughput")
        ax_p99.set_title("p99 latency")
        fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fig.savefig(fh, format="png", dpi=110)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)   # mkstemp's 0600 would make the figure private
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return path
