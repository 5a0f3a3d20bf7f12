"""One speedup interval over several processes (ptflow.measure.hierarchy): the t quantiles,
the model's cases, and the property that matters: over many simulated runs whose processes
differ, the interval holds the true speedup about 95% of the time, where one process's own
interval almost never does."""
from __future__ import annotations

import math
import random

import pytest

from ptflow.measure.hierarchy import combine, t975, within_sd
from ptflow.measure.stats import Z95, Ratio


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622),
                                          (11, 2.2010), (20, 2.0860), (60, 2.0003), (1000, 1.9623)])
def test_t975_matches_students_t(df, expected):
    assert t975(df) == pytest.approx(expected, abs=2e-4)


def test_t975_refuses_no_degrees_of_freedom():
    with pytest.raises(ValueError, match="degrees of freedom"):
        t975(0)


def test_one_process_keeps_its_own_interval():
    mine = Ratio(2.0, 1.9, 2.1)
    combined = combine([mine])
    assert combined.ratio == mine and combined.processes == 1 and combined.between == 0.0


def test_processes_that_differ_widen_the_interval_around_their_geometric_mean():
    ratios = [Ratio(v, v * 0.99, v * 1.01) for v in (1.6, 2.0, 2.5)]
    combined = combine(ratios)
    centre = math.exp(sum(math.log(r.value) for r in ratios) / 3)
    assert combined.ratio.value == pytest.approx(centre)
    assert combined.ratio.low < 1.6 and combined.ratio.high > 2.5   # t with 2 df: wider than the three
    half = t975(2) * combined.between / math.sqrt(3)
    assert math.log(combined.ratio.high / centre) == pytest.approx(half)


def test_processes_that_agree_keep_the_within_process_uncertainty():
    ratios = [Ratio(2.0, 1.8, 2.2)] * 4   # identical processes: no spread between them
    combined = combine(ratios)
    assert combined.between == 0.0
    assert combined.within == pytest.approx(within_sd(ratios[0]))
    assert combined.ratio.low < 2.0 < combined.ratio.high   # not a zero-width interval


def test_a_ratio_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="not a positive number"):
        combine([Ratio(2.0, 1.9, 2.1), Ratio(0.0, 0.0, 0.0)])


def _simulated_run(rng: random.Random, processes: int, mu: float, tau: float, noise: float) -> list[Ratio]:
    """Each process lands at its own offset (sd tau, on the log scale) and reports a tight
    interval around it (sd noise): the execution-level variance one process cannot see."""
    found = []
    for _ in range(processes):
        centre = mu + rng.gauss(0, tau) + rng.gauss(0, noise)
        found.append(Ratio(math.exp(centre), math.exp(centre - Z95 * noise), math.exp(centre + Z95 * noise)))
    return found


def test_the_interval_over_processes_covers_the_true_speedup_where_one_process_does_not():
    rng = random.Random(19)
    mu, tau, noise, runs = math.log(2.0), 0.08, 0.01, 2000
    over_five = over_one = 0
    for _ in range(runs):
        ratios = _simulated_run(rng, 5, mu, tau, noise)
        over_five += combine(ratios).ratio.contains(2.0)
        over_one += ratios[0].contains(2.0)
    assert 0.93 <= over_five / runs <= 0.97    # a 95% interval that means it
    assert over_one / runs < 0.3               # one process's interval: ~10% here
