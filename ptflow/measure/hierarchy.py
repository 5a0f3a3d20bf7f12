"""One speedup interval over several processes: samples within processes, processes within
the run. Pure: no torch, no config, no tracking.

Why: the noise between samples of one process is only part of a timing's variance. Where
the memory lands, which cores the process gets, the state of the machine: these change from
process to process and stay put within one, so an interval built from one process's samples
covers that process and not the next one (Kalibera & Jones, "Rigorous benchmarking in
reasonable time", ISMM 2013, and "Quantifying performance changes with effect size
confidence intervals", 2020; pyperf runs every benchmark in many worker processes for the
same reason).

The model, on the log scale where a speedup's noise is symmetric: process ``i`` reports
``log r_i = mu + b_i + e_i``, with ``b_i`` the process's own offset (variance ``tau^2``,
between processes) and ``e_i`` its sampling error (variance ``v_i``, read off the process's
paired-bootstrap interval). The run's speedup is ``exp(mean(log r_i))`` (the geometric mean
of the processes' ratios). The sample variance of the ``log r_i`` estimates ``tau^2 +
mean(v_i)``, so the standard error of the mean is ``s / sqrt(n)``; when chance makes ``s^2``
smaller than ``mean(v_i)`` (the processes agree better than their own samples allow) the
within-process part is used instead (``tau^2`` cut at 0, as DerSimonian-Laird do). With a
handful of processes ``s`` is itself uncertain, so the interval uses Student's t with
``n - 1`` degrees of freedom, not the normal 1.96: with 3 processes t is 4.30, with 5 it is
2.78. A bootstrap over 3 or 5 processes would be narrower and wrong (it cannot see a spread
its few processes happen not to show).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ptflow.measure.stats import Z95, Ratio

_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852)   # Student's t, 97.5% quantile, 1..10 degrees of freedom


def t975(df: int) -> float:
    """Student's t 97.5% quantile (two-sided 95%) for `df` >= 1 degrees of freedom: the table
    above to 10, then the Cornish-Fisher series in 1/df (error < 2e-4 from 11 on)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


@dataclass(frozen=True)
class Combined:
    """The run's speedup over ``processes`` processes, its 95% interval, and the two parts of
    its variance (standard deviations of the log ratio): ``between`` processes (0 with one
    process) and ``within`` one (the processes' own sampling noise, root mean square)."""

    ratio: Ratio
    processes: int
    between: float
    within: float

    @property
    def spread(self) -> float:
        """How far the processes' ratios differ from each other, as a fraction (the standard
        deviation of their logs, 0.05: about 5%)."""
        return math.expm1(self.between)


def within_sd(ratio: Ratio) -> float:
    """The standard deviation of log(ratio) that a process's 95% interval implies."""
    if not (ratio.low > 0 and ratio.high > 0):
        return math.inf
    return (math.log(ratio.high) - math.log(ratio.low)) / (2 * Z95)


def combine(per_process: Sequence[Ratio]) -> Combined:
    """The speedup of a run timed in ``len(per_process)`` processes, each reporting its own
    paired ratio and interval (see the module docstring). One process: its own interval,
    unchanged (it covers that process only, and says nothing about the next)."""
    if not per_process:
        raise ValueError("no process to combine")
    within = math.sqrt(statistics.fmean(within_sd(r) ** 2 for r in per_process))
    if len(per_process) == 1:
        return Combined(per_process[0], 1, 0.0, within)
    if any(not (r.value > 0 and math.isfinite(r.value)) for r in per_process):
        raise ValueError(f"a process reported a ratio that is not a positive number: "
                         f"{[r.value for r in per_process]}")
    logs = [math.log(r.value) for r in per_process]
    n = len(logs)
    centre = statistics.fmean(logs)
    between = statistics.stdev(logs)
    se = max(between, within) / math.sqrt(n)
    half = t975(n - 1) * se
    return Combined(Ratio(math.exp(centre), math.exp(centre - half), math.exp(centre + half)), n, between, within)
