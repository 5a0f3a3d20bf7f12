"""The latency protocol and its statistics. Pure functions: no config, no tracking.

Protocol: warm every callable up, then time them in alternating rounds (A B, B A, ...)
in one process, so drift in clock speed or load hits baseline and candidate alike.
Each sample is one call, fenced by `sync` (``torch.cuda.synchronize`` on CUDA).
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LatencyStats:
    n: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float        # p75 - p25: the spread of the middle half, blind to rare outliers

    @property
    def dispersion(self) -> float:
        """IQR / median: how noisy the timing was, independent of the model's speed."""
        if self.p50_ms > 0:
            return self.iqr_ms / self.p50_ms
        return 0.0 if self.iqr_ms == 0 else math.inf

    def as_metrics(self, prefix: str) -> dict[str, float]:
        values = {**asdict(self), "dispersion": self.dispersion}
        return {f"{prefix}.{key}": float(value) for key, value in values.items()}


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples_s: Sequence[float]) -> LatencyStats:
    """Statistics of per-call times given in seconds, reported in milliseconds."""
    ms = [s * 1e3 for s in samples_s]
    return LatencyStats(
        n=len(ms),
        mean_ms=statistics.fmean(ms),
        std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        min_ms=min(ms),
        max_ms=max(ms),
        iqr_ms=percentile(ms, 75) - percentile(ms, 25),
    )


def time_calls(fn: Callable[[], object], count: int, sync: Callable[[], None] | None = None) -> list[float]:
    """`count` samples of one call each, in seconds."""
    samples = []
    fence = sync or (lambda: None)
    fence()
    for _ in range(count):
        start = time.perf_counter()
        fn()
        fence()
        samples.append(time.perf_counter() - start)
    return samples


def paired_latency(fns: Mapping[str, Callable[[], object]], warmup: int, iters: int, rounds: int,
                   sync: Callable[[], None] | None = None,
                   progress: Callable[..., Iterable] = lambda it, **_: it) -> dict[str, list[float]]:
    """Warm each callable up, then time them alternately; `iters` samples each."""
    if iters < 1 or rounds < 1:
        raise ValueError("iters and rounds must be >= 1")
    names = list(fns)
    for name in names:
        time_calls(fns[name], warmup, sync)
    samples: dict[str, list[float]] = {name: [] for name in names}
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    for round_index in progress(range(rounds), desc="timing", unit="round"):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            samples[name].extend(time_calls(fns[name], per_round[round_index], sync))
    return samples
