"""Tests for ptflow.measure: percentiles, latency statistics, and the paired timing protocol."""
from __future__ import annotations

import random

import numpy as np
import pytest

from ptflow.measure import LatencyStats, paired_latency, percentile, summarize, time_calls


@pytest.mark.parametrize("n", [1, 2, 7, 100])
@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100, 33.3])
def test_percentile_matches_numpy(n, q):
    rng = random.Random(n * 1000 + int(q * 10))
    samples = [rng.uniform(0, 10) for _ in range(n)]
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12, abs=1e-12)


def test_percentile_unsorted_input_not_mutated():
    samples = [5.0, 1.0, 3.0]
    assert percentile(samples, 50) == 3.0
    assert samples == [5.0, 1.0, 3.0]


def test_percentile_of_empty_raises():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_converts_to_ms_and_orders():
    rng = random.Random(0)
    samples_s = [rng.uniform(0.001, 0.02) for _ in range(50)]
    stats = summarize(samples_s)
    ms = np.array(samples_s) * 1e3
    assert stats.n == 50
    assert stats.mean_ms == pytest.approx(float(ms.mean()))
    assert stats.std_ms == pytest.approx(float(ms.std(ddof=1)))
    assert stats.min_ms == pytest.approx(float(ms.min()))
    assert stats.max_ms == pytest.approx(float(ms.max()))
    assert stats.p50_ms == pytest.approx(float(np.percentile(ms, 50)))
    assert stats.p90_ms == pytest.approx(float(np.percentile(ms, 90)))
    assert stats.p99_ms == pytest.approx(float(np.percentile(ms, 99)))
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms


def test_summarize_units_exact():
    stats = summarize([0.001, 0.002, 0.003])
    assert stats.mean_ms == pytest.approx(2.0)
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.max_ms == pytest.approx(3.0)
    assert stats.p50_ms == pytest.approx(2.0)


@pytest.mark.parametrize("n", [2, 5, 100])
def test_iqr_matches_numpy_and_dispersion_is_relative_to_the_median(n):
    rng = random.Random(n)
    samples_s = [rng.uniform(0.001, 0.02) for _ in range(n)]
    ms = np.array(samples_s) * 1e3
    stats = summarize(samples_s)
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    assert stats.iqr_ms == pytest.approx(float(q75 - q25))
    assert stats.dispersion == pytest.approx(float((q75 - q25) / q50))


def test_iqr_ignores_rare_outliers():
    steady = [0.001] * 50 + [0.002] * 50
    stats = summarize(steady + [1.0] * 3)      # three 1 s stalls among 100 samples
    assert stats.iqr_ms == pytest.approx(1.0) and stats.dispersion == pytest.approx(0.5)
    assert summarize([0.003] * 10).dispersion == 0.0


def test_dispersion_of_a_zero_median():
    base = dict(n=2, mean_ms=0.0, std_ms=0.0, p50_ms=0.0, p90_ms=0.0, p99_ms=0.0, min_ms=0.0, max_ms=0.0)
    assert LatencyStats(**base, iqr_ms=0.0).dispersion == 0.0
    assert LatencyStats(**base, iqr_ms=1.0).dispersion == float("inf")


def test_summarize_one_sample_std_zero():
    stats = summarize([0.005])
    assert stats.n == 1
    assert stats.std_ms == 0.0
    assert stats.mean_ms == pytest.approx(5.0)
    assert stats.p50_ms == stats.p99_ms == stats.min_ms == stats.max_ms == pytest.approx(5.0)
    assert stats.iqr_ms == 0.0 and stats.dispersion == 0.0


def test_time_calls_counts_and_syncs():
    calls = []
    syncs = []
    samples = time_calls(lambda: calls.append(1), 5, sync=lambda: syncs.append(1))
    assert len(samples) == 5
    assert len(calls) == 5
    assert len(syncs) >= 5  # one fence after every call (plus one before the first)
    assert all(s >= 0 for s in samples)


def test_time_calls_fence_follows_each_call():
    events = []
    time_calls(lambda: events.append("call"), 3, sync=lambda: events.append("sync"))
    calls_at = [i for i, e in enumerate(events) if e == "call"]
    for i in calls_at:
        assert events[i + 1] == "sync"


def test_time_calls_without_sync():
    assert len(time_calls(lambda: None, 4)) == 4


def test_time_calls_zero_count():
    calls = []
    assert time_calls(lambda: calls.append(1), 0) == []
    assert calls == []


def _recorder(log, name):
    return lambda: log.append(name)


def test_paired_latency_sample_counts_and_warmup():
    counts = {"a": 0, "b": 0}

    def make(name):
        def fn():
            counts[name] += 1
        return fn

    out = paired_latency({"a": make("a"), "b": make("b")}, warmup=3, iters=6, rounds=2)
    assert set(out) == {"a", "b"}
    assert len(out["a"]) == 6 and len(out["b"]) == 6
    assert counts == {"a": 9, "b": 9}  # 3 warm-up + 6 timed each


def test_paired_latency_alternates_order():
    log = []
    paired_latency({"A": _recorder(log, "A"), "B": _recorder(log, "B")},
                   warmup=1, iters=4, rounds=2)
    warm, timed = log[:2], log[2:]
    assert warm == ["A", "B"]
    assert timed[:4] == ["A", "A", "B", "B"]   # round 0: A then B
    assert timed[4:] == ["B", "B", "A", "A"]   # round 1: B then A


def test_paired_latency_distributes_uneven_iters():
    log = []
    out = paired_latency({"A": _recorder(log, "A"), "B": _recorder(log, "B")},
                         warmup=0, iters=10, rounds=3)
    assert len(out["A"]) == 10 and len(out["B"]) == 10
    assert log == ["A"] * 4 + ["B"] * 4 + ["B"] * 3 + ["A"] * 3 + ["A"] * 3 + ["B"] * 3


def test_paired_latency_calls_sync_and_progress():
    syncs = []
    seen = {}

    def progress(it, **kwargs):
        seen.update(kwargs)
        seen["rounds"] = list(it)
        return seen["rounds"]

    paired_latency({"A": lambda: None}, warmup=1, iters=3, rounds=3,
                   sync=lambda: syncs.append(1), progress=progress)
    assert seen["rounds"] == [0, 1, 2]
    assert len(syncs) >= 4  # at least one fence per call (1 warm-up + 3 timed)


@pytest.mark.parametrize("iters, rounds", [(0, 1), (-1, 2), (5, 0)])
def test_paired_latency_rejects_bad_counts(iters, rounds):
    calls = []
    with pytest.raises(ValueError):
        paired_latency({"A": lambda: calls.append(1)}, warmup=2, iters=iters, rounds=rounds)
    assert calls == []  # rejected before any warm-up


def test_as_metrics_keys_and_values():
    stats = LatencyStats(n=3, mean_ms=1.5, std_ms=0.1, p50_ms=1.4, p90_ms=1.8,
                         p99_ms=1.9, min_ms=1.0, max_ms=2.0, iqr_ms=0.35)
    metrics = stats.as_metrics("benchmark.candidate")
    assert metrics == {
        "benchmark.candidate.n": 3.0,
        "benchmark.candidate.mean_ms": 1.5,
        "benchmark.candidate.std_ms": 0.1,
        "benchmark.candidate.p50_ms": 1.4,
        "benchmark.candidate.p90_ms": 1.8,
        "benchmark.candidate.p99_ms": 1.9,
        "benchmark.candidate.min_ms": 1.0,
        "benchmark.candidate.max_ms": 2.0,
        "benchmark.candidate.iqr_ms": 0.35,
        "benchmark.candidate.dispersion": pytest.approx(0.25),
    }
    assert all(type(v) is float for v in metrics.values())


def test_as_metrics_from_summarize():
    metrics = summarize([0.001, 0.002]).as_metrics("benchmark.baseline")
    assert metrics["benchmark.baseline.p50_ms"] == pytest.approx(1.5)
    assert metrics["benchmark.baseline.n"] == 2.0
