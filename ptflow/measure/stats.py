"""The statistics of timed samples. Pure functions: no torch, no config, no tracking.

- ``summarize``: p50 (the headline), p90, p95, p99, mean, std, min, max, IQR and
  IQR/median (``dispersion``) of per-call times, and which percentiles ``n`` supports.
- ``median_ci``: a distribution-free 95% confidence interval of the median (order
  statistics), cheap enough to test after every few samples (the stopping rule).
- ``paired_ratio``: the ratio of two medians with a bootstrap 95% CI that resamples
  *pairs* (a baseline sample and the candidate sample timed next to it), so drift that
  hits both sides of a pair does not widen or bias the interval.
- ``classify``: stable / unstable / invalid by IQR/median.
"""
from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054        # two-sided 95% normal quantile
TAIL_SAMPLES = 1               # a pXX is supported when at least this many samples lie above it
REPORTED = (90, 95, 99)        # the tail percentiles ptflow reports and flags
BOOTSTRAP_RESAMPLES = 2000


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    return _sorted_percentile(ordered, q)


def _sorted_percentile(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def samples_needed(q: float) -> int:
    """The fewest samples that support percentile q: TAIL_SAMPLES of them above it
    (p90: 10, p95: 20, p99: 100). Below that the 'p99' is just the largest sample."""
    return math.ceil(TAIL_SAMPLES * 100 / (100 - q) - 1e-9)


@dataclass(frozen=True)
class LatencyStats:
    n: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
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

    def supports(self, q: float) -> bool:
        """Enough samples for percentile q to mean more than 'the largest sample'."""
        return self.n >= samples_needed(q)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        values = {**asdict(self), "dispersion": self.dispersion,
                  **{f"p{q}_supported": float(self.supports(q)) for q in REPORTED}}
        return {f"{prefix}.{key}": float(value) for key, value in values.items()}


def summarize(samples_s: Sequence[float]) -> LatencyStats:
    """Statistics of per-call times given in seconds, reported in milliseconds."""
    if not samples_s:
        raise ValueError("statistics of no samples")
    ms = sorted(s * 1e3 for s in samples_s)
    return LatencyStats(
        n=len(ms),
        mean_ms=statistics.fmean(ms),
        std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
        p50_ms=_sorted_percentile(ms, 50),
        p90_ms=_sorted_percentile(ms, 90),
        p95_ms=_sorted_percentile(ms, 95),
        p99_ms=_sorted_percentile(ms, 99),
        min_ms=ms[0],
        max_ms=ms[-1],
        iqr_ms=_sorted_percentile(ms, 75) - _sorted_percentile(ms, 25),
    )


def median_ci(samples: Sequence[float]) -> tuple[float, float]:
    """95% confidence interval of the median from order statistics (no distribution
    assumed): the samples at ranks n/2 -/+ 1.96*sqrt(n)/2. With fewer than 6 samples it
    is the whole range."""
    if not samples:
        raise ValueError("confidence interval of no samples")
    ordered = sorted(samples)
    n = len(ordered)
    half = Z95 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)        # 1-based rank -> index
    high = min(n - 1, math.ceil(n / 2 + half))        # 1 + n/2 + half, 1-based -> index
    return ordered[low], ordered[high]


def median_ci_width(samples: Sequence[float]) -> float:
    """Half the width of the median's 95% CI relative to the median (0.01 = +-1%)."""
    low, high = median_ci(samples)
    median = statistics.median(samples)
    if median <= 0:
        return 0.0 if high == low else math.inf
    return (high - low) / 2 / median


@dataclass(frozen=True)
class Ratio:
    """median(numerator) / median(denominator) with a bootstrap 95% CI."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> Ratio:
    """median(numerator) / median(denominator), e.g. baseline over candidate time = the
    speedup, with a percentile-bootstrap 95% CI over pairs: sample i of each side were
    timed next to each other, and a resample draws whole pairs.

    The interval is widened to include the point estimate when resampling puts it just
    outside (possible with a handful of samples and ties): a CI that excludes the value
    it is reported with would only confuse."""
    import numpy

    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired samples of equal, non-zero length; found {len(numerator)} and "
                         f"{len(denominator)}")
    top, bottom = numpy.asarray(numerator, float), numpy.asarray(denominator, float)
    value = _ratio(float(numpy.median(top)), float(numpy.median(bottom)))
    rng = numpy.random.default_rng(seed & 0xFFFF_FFFF_FFFF_FFFF)
    picks = rng.integers(0, len(top), size=(resamples, len(top)))
    with numpy.errstate(divide="ignore", invalid="ignore"):
        ratios = numpy.median(top[picks], axis=1) / numpy.median(bottom[picks], axis=1)
    low, high = (float(x) for x in numpy.nanpercentile(ratios, [2.5, 97.5]))
    return Ratio(value, min(low, value), max(high, value))


def _ratio(top: float, bottom: float) -> float:
    if bottom > 0:
        return top / bottom
    return math.nan if top == 0 else math.inf


class Stability(str, enum.Enum):
    """How far timings can be trusted, by their IQR/median."""

    STABLE = "stable"
    UNSTABLE = "unstable"      # above the unstable limit: reported, tagged and warned about
    INVALID = "invalid"        # above the invalid limit: the numbers are not a measurement

    def __str__(self) -> str:
        return self.value


def classify(dispersions: Mapping[str, float], unstable_above: float,
             invalid_above: float) -> tuple[Stability, dict[str, float]]:
    """(the worst class of any timing, the timings above the unstable limit)."""
    noisy = {name: value for name, value in dispersions.items() if value > unstable_above}
    if any(value > invalid_above for value in dispersions.values()):
        noisy.update({name: value for name, value in dispersions.items() if value > invalid_above})
        return Stability.INVALID, noisy
    return (Stability.UNSTABLE if noisy else Stability.STABLE), noisy
