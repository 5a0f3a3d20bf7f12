"""ptflow.measure.protocol and ptflow.measure.stats (its statistics), driven by a fake clock:
every call advances it by a chosen time, so the tests know the true answer. No timed assertions."""
from __future__ import annotations

import gc
import math
import random

import numpy as np
import pytest

from ptflow.measure import protocol as measure, stats
from ptflow.measure.protocol import Protocol, calls_per_sample, cpu_block, interleave, warm_up
from ptflow.measure.stats import LatencyStats, Stability, classify, median_ci, median_ci_width, paired_ratio, percentile, summarize


class FakeClock:
    """A nanosecond clock that moves only when told; reading it may cost `read_cost_s`
    (the timer overhead that blocked timing makes negligible)."""

    def __init__(self, read_cost_s: float = 0.0):
        self.ns = 0
        self.read_cost_ns = round(read_cost_s * 1e9)
        self.reads = 0

    def now_ns(self) -> int:
        self.reads += 1
        self.ns += self.read_cost_ns
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


def model(clock: FakeClock, seconds):
    """A callable that takes `seconds(i)` on the fake clock at its i-th call (or a constant)."""
    count = {"calls": 0}
    duration = seconds if callable(seconds) else (lambda i: seconds)

    def fn():
        clock.advance(duration(count["calls"]))
        count["calls"] += 1

    fn.count = count
    return fn


def runner(clock, seconds):
    return cpu_block(model(clock, seconds), clock.now_ns)


QUIET = dict(warmup_calls=0, warmup_s=0.0, warmup_max_s=1.0, settle=0.02, min_samples=10, min_time_s=0.0,
             max_time_s=1.0, ci_target=0.05, block_s=0.0, turn_samples=1, rewarm_blocks=0)


# --- block timing ---------------------------------------------------------------------------

def test_a_block_runs_k_calls_between_two_clock_reads_fenced_with_gc_off():
    clock, events = FakeClock(), []

    def fn():
        events.append(("call", gc.isenabled()))
        clock.advance(0.002)

    run = cpu_block(fn, clock.now_ns, sync=lambda: events.append(("sync", None)))
    was_enabled = gc.isenabled()
    assert run(3) == pytest.approx(0.006)
    assert [e for e, _ in events] == ["sync", "call", "call", "call", "sync"]
    assert all(enabled is False for e, enabled in events if e == "call")
    assert gc.isenabled() == was_enabled and clock.reads == 2


def test_gc_is_restored_when_a_call_raises():
    def boom():
        raise RuntimeError("model failed")

    gc.enable()
    with pytest.raises(RuntimeError):
        cpu_block(boom, FakeClock().now_ns)(1)
    assert gc.isenabled()


@pytest.mark.parametrize("call_s, block_s, at_least, expected", [
    (10e-6, 1e-3, 1, 100), (0.004, 1e-3, 1, 1), (0.0004, 1e-3, 1, 3), (10e-6, 0.0, 1, 1),
    (0.004, 1e-3, 4, 4), (1e-12, 1e-3, 1, measure.MAX_CALLS_PER_SAMPLE), (0.0, 1e-3, 1, measure.MAX_CALLS_PER_SAMPLE)])
def test_calls_per_sample_fills_a_block(call_s, block_s, at_least, expected):
    assert calls_per_sample(call_s, block_s, at_least) == expected


def test_blocks_make_timer_overhead_negligible_for_sub_ms_calls():
    true_s, overhead_s = 5e-6, 2e-6       # each clock read costs 40% of a call
    clock = FakeClock(read_cost_s=overhead_s)
    protocol = Protocol(**{**QUIET, "block_s": 1e-3})
    warm, timed = measure.measure({"a": runner(clock, true_s)}, clock.now_ns, protocol)
    assert warm["a"].calls_per_sample >= 1e-3 / (true_s + overhead_s)
    per_call = statistics_median(timed.samples_s["a"])
    assert per_call == pytest.approx(true_s, rel=0.01)          # blocked: within 1%
    single = cpu_block(model(clock, true_s), clock.now_ns)(1)
    assert single == pytest.approx(true_s + overhead_s)          # one call per read: 40% off


def statistics_median(values):
    return float(np.median(values))


# --- warm-up --------------------------------------------------------------------------------

def test_the_cold_call_is_reported_apart_and_warm_up_runs_until_the_median_settles():
    clock = FakeClock()
    # cold 50 ms, then 1 ms plus a transient that decays by 30% a call (JIT caches, allocator, clocks)
    fn = model(clock, lambda i: 0.050 if i == 0 else 0.001 * (1 + 2.0 * 0.7 ** i))
    protocol = Protocol(**{**QUIET, "warmup_calls": 6, "settle": 0.01, "warmup_max_s": 10.0})
    warm = warm_up(cpu_block(fn, clock.now_ns), clock.now_ns, protocol)
    assert warm.cold_s == pytest.approx(0.050)
    assert warm.settled and warm.calls >= 6 and warm.calls == len(warm.trace_s)
    assert warm.call_s == pytest.approx(0.001, rel=0.03)           # the transient is over
    assert warm.trace_s[0] > warm.trace_s[-1]
    assert warm.seconds == pytest.approx(0.050 + sum(warm.trace_s), rel=1e-6)


def test_warm_up_keeps_its_minimum_calls_and_seconds_even_when_flat():
    clock = FakeClock()
    protocol = Protocol(**{**QUIET, "warmup_calls": 20, "warmup_s": 0.5})
    warm = warm_up(runner(clock, 0.01), clock.now_ns, protocol)
    assert warm.settled and warm.calls >= 20 and warm.seconds >= 0.5


def test_warm_up_that_never_settles_stops_at_its_cap():
    clock = FakeClock()
    protocol = Protocol(**{**QUIET, "warmup_calls": 4, "warmup_max_s": 2.0})
    warm = warm_up(runner(clock, lambda i: 0.001 * 1.1 ** i), clock.now_ns, protocol)   # slower every call
    assert not warm.settled
    assert 2.0 <= warm.seconds < 2.0 * 1.2


def test_warm_up_grows_the_block_as_calls_get_fast_and_restarts_its_windows():
    clock = FakeClock()
    fn = model(clock, lambda i: 0.002 if i < 5 else 20e-6)   # slow at first, then 20 us
    protocol = Protocol(**{**QUIET, "block_s": 1e-3})
    warm = warm_up(cpu_block(fn, clock.now_ns), clock.now_ns, protocol)
    assert warm.settled and warm.calls_per_sample == 50 and warm.call_s == pytest.approx(20e-6)


# --- interleaved timing and its stopping rule -----------------------------------------------

def test_turns_alternate_order_and_open_with_untimed_re_warm_blocks():
    clock, log = FakeClock(), []

    def logged(name):
        def fn():
            log.append(name)
            clock.advance(0.001)
        return cpu_block(fn, clock.now_ns)

    protocol = Protocol(**{**QUIET, "turn_samples": 3, "rewarm_blocks": 2, "min_samples": 6})
    timed = interleave({"A": logged("A"), "B": logged("B")}, {"A": 2, "B": 1}, clock.now_ns, protocol)
    assert log == ["A"] * 10 + ["B"] * 5 + ["B"] * 5 + ["A"] * 10   # (2 re-warm + 3 timed) blocks a turn
    assert [len(v) for v in timed.samples_s.values()] == [6, 6] and timed.turn_samples == 3


class SwitchPenalty:
    """Two models sharing a cache: the first calls after the other model ran are slow."""

    def __init__(self, clock: FakeClock):
        self.clock, self.last = clock, None
        self.since_switch = 0

    def model(self, name: str, seconds: float):
        def fn():
            self.since_switch = 0 if self.last != name else self.since_switch + 1
            self.last = name
            self.clock.advance(seconds * (1.5 if self.since_switch == 0 else 1.2 if self.since_switch == 1 else 1.0))
        return cpu_block(fn, self.clock.now_ns)


def test_re_warm_keeps_the_cost_of_switching_models_out_of_the_samples():
    clock = FakeClock()
    cache = SwitchPenalty(clock)
    runs = {"A": cache.model("A", 0.004), "B": cache.model("B", 0.002)}
    with_rewarm = interleave(runs, {"A": 1, "B": 1}, clock.now_ns, Protocol(**{**QUIET, "rewarm_blocks": 2}))
    without = interleave(runs, {"A": 1, "B": 1}, clock.now_ns, Protocol(**QUIET))
    assert statistics_median(with_rewarm.samples_s["A"]) == pytest.approx(0.004)     # steady state
    assert statistics_median(without.samples_s["A"]) >= 0.004 * 1.2                   # samples right after a switch


def test_pairs_alternate_order_and_stop_at_the_minimum_when_the_ci_is_tight():
    clock, log = FakeClock(), []

    def logged(name, seconds):
        def fn():
            log.append(name)
            clock.advance(seconds)
        return cpu_block(fn, clock.now_ns)

    timed = interleave({"A": logged("A", 0.002), "B": logged("B", 0.001)}, {"A": 1, "B": 1}, clock.now_ns,
                       Protocol(**QUIET))
    assert log[:8] == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert timed.pairs == 10 and timed.ci_met and timed.order == ("A", "B")
    assert timed.samples_s["A"] == pytest.approx([0.002] * 10)


def test_min_time_holds_beside_min_samples():
    clock = FakeClock()
    timed = interleave({"A": runner(clock, 0.001)}, {"A": 1}, clock.now_ns, Protocol(**{**QUIET, "min_time_s": 0.5}))
    assert timed.seconds >= 0.5 and timed.pairs >= 500


def _noisy(clock, median_s, spread, seed):
    rng = random.Random(seed)
    return runner(clock, lambda i: median_s * (1 + rng.uniform(-spread, spread)))


def test_timing_goes_on_until_the_median_ci_is_within_target():
    clock = FakeClock()
    protocol = Protocol(**{**QUIET, "ci_target": 0.005, "max_time_s": 100.0})
    timed = interleave({"A": _noisy(clock, 0.002, 0.2, 1), "B": _noisy(clock, 0.001, 0.2, 2)}, {"A": 1, "B": 1},
                       clock.now_ns, protocol)
    assert timed.ci_met and timed.pairs > protocol.min_samples
    assert all(median_ci_width(v) <= 0.005 for v in timed.samples_s.values())


def test_max_time_caps_a_ci_that_cannot_be_met_but_never_the_minimums():
    clock = FakeClock()
    protocol = Protocol(**{**QUIET, "ci_target": 1e-6, "max_time_s": 0.3, "min_samples": 20})
    timed = interleave({"A": _noisy(clock, 0.002, 0.3, 3)}, {"A": 1}, clock.now_ns, protocol)
    assert not timed.ci_met and 0.3 <= timed.seconds < 0.3 + 0.01
    clock = FakeClock()
    timed = interleave({"A": _noisy(clock, 0.002, 0.3, 3)}, {"A": 1}, clock.now_ns,
                       Protocol(**{**QUIET, "ci_target": 1e-6, "max_time_s": 0.01, "min_samples": 50}))
    assert timed.pairs == 50                                  # 0.1 s of minimum samples beat a 0.01 s cap


def test_samples_are_per_call_means_of_their_block():
    clock = FakeClock()
    timed = interleave({"A": runner(clock, 1e-5)}, {"A": 100}, clock.now_ns, Protocol(**QUIET))
    assert timed.samples_s["A"] == pytest.approx([1e-5] * timed.pairs)


def test_progress_sees_pairs():
    clock, seen = FakeClock(), {}

    def progress(iterable, **kwargs):
        seen.update(kwargs)
        return iterable

    interleave({"A": runner(clock, 0.001)}, {"A": 1}, clock.now_ns, Protocol(**QUIET), progress)
    assert seen == {"desc": "timing", "unit": "turn"}


@pytest.mark.parametrize("changes", [dict(min_samples=0), dict(warmup_calls=-1), dict(max_time_s=0),
                                     dict(settle=math.nan), dict(ci_target=0), dict(block_s=-1),
                                     dict(min_calls_per_sample=0), dict(turn_samples=0), dict(rewarm_blocks=-1)])
def test_a_protocol_refuses_meaningless_settings(changes):
    with pytest.raises(ValueError):
        Protocol(**{**QUIET, **changes})


# --- statistics -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 100])
@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100, 33.3])
def test_percentile_matches_numpy(n, q):
    rng = random.Random(n * 1000 + int(q * 10))
    samples = [rng.uniform(0, 10) for _ in range(n)]
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12, abs=1e-12)


def test_percentile_unsorted_input_not_mutated_and_empty_raises():
    samples = [5.0, 1.0, 3.0]
    assert percentile(samples, 50) == 3.0 and samples == [5.0, 1.0, 3.0]
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        summarize([])


def test_summarize_converts_to_ms_and_matches_numpy():
    rng = random.Random(0)
    samples_s = [rng.uniform(0.001, 0.02) for _ in range(150)]
    s = summarize(samples_s)
    ms = np.array(samples_s) * 1e3
    assert s.n == 150
    assert s.mean_ms == pytest.approx(float(ms.mean())) and s.std_ms == pytest.approx(float(ms.std(ddof=1)))
    assert (s.min_ms, s.max_ms) == pytest.approx((float(ms.min()), float(ms.max())))
    for q in (50, 90, 95, 99):
        assert getattr(s, f"p{q}_ms") == pytest.approx(float(np.percentile(ms, q)))
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    assert s.iqr_ms == pytest.approx(float(q75 - q25)) and s.dispersion == pytest.approx(float((q75 - q25) / q50))
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms


def test_summarize_one_sample():
    s = summarize([0.005])
    assert s.n == 1 and s.std_ms == 0.0 and s.iqr_ms == 0.0 and s.dispersion == 0.0
    assert s.p50_ms == s.p99_ms == s.min_ms == s.max_ms == pytest.approx(5.0)


def test_iqr_ignores_rare_outliers():
    s = summarize([0.001] * 50 + [0.002] * 50 + [1.0] * 3)      # three 1 s stalls among 100 samples
    assert s.iqr_ms == pytest.approx(1.0) and s.dispersion == pytest.approx(0.5)


def test_dispersion_of_a_zero_median():
    base = dict(n=2, mean_ms=0.0, std_ms=0.0, p50_ms=0.0, p90_ms=0.0, p95_ms=0.0, p99_ms=0.0, min_ms=0.0, max_ms=0.0)
    assert LatencyStats(**base, iqr_ms=0.0).dispersion == 0.0
    assert LatencyStats(**base, iqr_ms=1.0).dispersion == math.inf


@pytest.mark.parametrize("q, needed", [(90, 10), (95, 20), (99, 100), (50, 2)])
def test_a_percentile_needs_samples_above_it(q, needed):
    assert stats.samples_needed(q) == needed
    assert summarize([0.001] * needed).supports(q) and not summarize([0.001] * (needed - 1)).supports(q)


def test_as_metrics_names_every_figure_and_flags_tail_percentiles():
    metrics = summarize([0.001 * (1 + i / 100) for i in range(30)]).as_metrics("benchmark.candidate")
    assert set(metrics) == {f"benchmark.candidate.{k}" for k in (
        "n", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "iqr_ms",
        "dispersion", "p90_supported", "p95_supported", "p99_supported")}
    assert metrics["benchmark.candidate.p95_supported"] == 1.0 and metrics["benchmark.candidate.p99_supported"] == 0.0
    assert all(type(v) is float for v in metrics.values())


def test_median_ci_brackets_the_median_and_shrinks_with_n():
    rng = random.Random(4)
    small = [rng.expovariate(1.0) for _ in range(30)]
    large = [rng.expovariate(1.0) for _ in range(3000)]
    for samples in (small, large):
        low, high = median_ci(samples)
        assert low <= float(np.median(samples)) <= high
    assert median_ci_width(large) < median_ci_width(small) / 5
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)             # few samples: the whole range
    assert median_ci_width([0.002] * 10) == 0.0


def test_median_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = random.Random(5)
    trials, true_median = 400, math.log(2)                       # exponential(1)
    covered = 0
    for _ in range(trials):
        low, high = median_ci([rng.expovariate(1.0) for _ in range(101)])
        covered += low <= true_median <= high
    assert 0.92 <= covered / trials <= 0.99


def _paired(n, ratio, seed, drift=0.0, noise=0.1):
    """Baseline/candidate samples, pair i sharing a slow drift (load, clocks)."""
    rng = random.Random(seed)
    base, cand = [], []
    for i in range(n):
        shared = 1 + drift * math.sin(i / 7)
        cand.append(0.001 * shared * (1 + rng.uniform(-noise, noise)))
        base.append(0.001 * ratio * shared * (1 + rng.uniform(-noise, noise)))
    return base, cand


def test_the_bootstrap_ci_of_a_paired_ratio_contains_the_true_ratio():
    hits = 0
    for seed in range(60):
        base, cand = _paired(200, 2.2, seed, drift=0.3)
        result = paired_ratio(base, cand, seed)
        assert result.low <= result.value <= result.high
        hits += result.contains(2.2)
    assert hits >= 54                                            # ~95% coverage, allowing for chance


def test_the_bootstrap_is_seeded_and_narrows_with_more_pairs():
    base, cand = _paired(400, 1.5, 7)
    assert paired_ratio(base, cand, 3) == paired_ratio(base, cand, 3)
    few = paired_ratio(base[:40], cand[:40], 3)
    many = paired_ratio(base, cand, 3)
    assert many.high - many.low < few.high - few.low
    assert many.value == pytest.approx(float(np.median(base) / np.median(cand)))


def test_a_paired_ratio_needs_pairs():
    with pytest.raises(ValueError, match="equal, non-zero length"):
        paired_ratio([0.001, 0.002], [0.001])
    with pytest.raises(ValueError):
        paired_ratio([], [])


@pytest.mark.parametrize("values, verdict, named", [
    ({"baseline": 0.05, "candidate": 0.09}, Stability.STABLE, set()),
    ({"baseline": 0.05, "candidate": 0.10}, Stability.STABLE, set()),       # at the limit: still stable
    ({"baseline": 0.05, "candidate": 0.11}, Stability.UNSTABLE, {"candidate"}),
    ({"baseline": 0.12, "candidate": 0.26}, Stability.INVALID, {"baseline", "candidate"}),
    ({"baseline": math.inf}, Stability.INVALID, {"baseline"}),
])
def test_stability_classes(values, verdict, named):
    found, noisy = classify(values, 0.10, 0.25)
    assert found is verdict and set(noisy) == named and str(found) == verdict.value
