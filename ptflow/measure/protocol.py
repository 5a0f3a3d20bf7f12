"""The latency protocol. Pure: no torch, no config, no tracking — the clock, the timed
block and the progress bar are passed in, so unit tests drive it with a fake clock.

For each model (a *role*: baseline, candidate):

1. **Cold call**: the first call, timed and reported on its own.
2. **Warm-up until stable**: at least ``warmup_calls`` calls and ``warmup_s`` seconds,
   then until the median of the last window of per-call times moves less than
   ``settle`` (relative) from the window before it; at most ``warmup_max_s``.
3. **Block size**: a sample is one call, or a block of calls lasting at least
   ``block_s`` when calls are shorter (timer overhead then stays negligible, as
   torch.utils.benchmark's ``blocked_autorange`` does); its value is the mean per call.

Then all roles are **timed interleaved**, in turns of alternating order (A B, B A, ...):
a turn is ``rewarm_blocks`` untimed blocks (the other model's turn evicted this one's
weights from the caches, and the first calls after a switch run slow) and then
``turn_samples`` timed samples. Sample j of A's turn and sample j of B's turn form a
pair, timed within one turn of each other, so drift in clock speed or load hits both
sides of a pair alike. Timing stops once every role has ``min_samples`` samples and
``min_time_s`` has passed *and* the 95% CI of each role's median is within
``ci_target`` of it, or once ``max_time_s`` has passed (the minimums always hold).

A block runner (``BlockRunner``) runs ``k`` calls back to back and returns their total
seconds, fenced as the device needs; ``cpu_block`` is the CPU one (``perf_counter_ns``),
the benchmark stage builds the CUDA ones (events, a copy stream).
"""
from __future__ import annotations

import gc
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from ptflow.measure.stats import median_ci_width

NowNs = Callable[[], int]                 # a monotonic clock in nanoseconds
BlockRunner = Callable[[int], float]      # run k calls back to back; their total seconds
Progress = Callable[..., Iterable]        # tqdm-like
MAX_CALLS_PER_SAMPLE = 100_000


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and time; see the module docstring. Times in seconds."""

    warmup_calls: int = 10
    warmup_s: float = 0.2
    warmup_max_s: float = 10.0
    settle: float = 0.02
    min_samples: int = 100
    min_time_s: float = 0.5
    max_time_s: float = 10.0
    ci_target: float = 0.02
    block_s: float = 0.001          # 0: every sample is one call
    min_calls_per_sample: int = 1   # throughput mode: keep several batches in flight per sample
    turn_samples: int = 10          # timed samples of one role before the other's turn
    rewarm_blocks: int = 2          # untimed blocks at the start of every turn

    def __post_init__(self) -> None:
        if min(self.min_samples, self.min_calls_per_sample, self.turn_samples) < 1 or \
                min(self.warmup_calls, self.rewarm_blocks) < 0:
            raise ValueError("min_samples, min_calls_per_sample and turn_samples must be >= 1; "
                             "warmup_calls and rewarm_blocks >= 0")
        if not (self.warmup_max_s > 0 and self.max_time_s > 0 and self.settle > 0 and self.ci_target > 0):
            raise ValueError("warmup_max_s, max_time_s, settle and ci_target must be > 0")
        if not (self.warmup_s >= 0 and self.min_time_s >= 0 and self.block_s >= 0):
            raise ValueError("warmup_s, min_time_s and block_s must be >= 0")

    @property
    def window(self) -> int:
        """Samples per window of the warm-up's rolling median."""
        return max(3, self.warmup_calls // 2)


@dataclass(frozen=True)
class WarmUp:
    cold_s: float                    # the first call
    calls: int                       # warm-up calls after the cold one
    seconds: float                   # wall time of cold call and warm-up
    settled: bool                    # False: warmup_max_s ended it
    call_s: float                    # per-call time at its end (median of the last window)
    calls_per_sample: int            # the block size the timed phase uses
    trace_s: tuple[float, ...]       # per-call time of every warm-up sample, in order


@dataclass(frozen=True)
class Timed:
    samples_s: Mapping[str, list[float]]   # per role, per-call seconds of each sample; index i = pair i
    order: tuple[str, ...]                  # the order of even turns (odd turns run reversed)
    turn_samples: int                       # samples i // turn_samples came from the same turn
    seconds: float
    ci_met: bool                            # every role's median CI within ci_target at the end

    @property
    def pairs(self) -> int:
        return len(next(iter(self.samples_s.values()), []))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside a timed block (a collection would land in one sample)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cpu_block(fn: Callable[[], object], now_ns: NowNs = time.perf_counter_ns,
              sync: Callable[[], None] | None = None) -> BlockRunner:
    """A block runner timing `k` calls of `fn` with `now_ns`, fenced by `sync` if given."""

    def run(calls: int) -> float:
        if sync is not None:
            sync()
        with gc_paused():
            start = now_ns()
            for _ in range(calls):
                fn()
            if sync is not None:
                sync()
            end = now_ns()
        return (end - start) / 1e9

    return run


def calls_per_sample(call_s: float, block_s: float, at_least: int = 1) -> int:
    """Calls per timed block so that a block lasts at least `block_s`."""
    if block_s <= 0:
        return at_least
    if call_s <= 0:
        return MAX_CALLS_PER_SAMPLE
    return max(at_least, min(MAX_CALLS_PER_SAMPLE, math.ceil(block_s / call_s)))


def warm_up(run: BlockRunner, now_ns: NowNs, protocol: Protocol) -> WarmUp:
    """Cold call, then warm-up until the rolling median settles (see the module docstring).
    The block size adapts as calls get faster; the settle windows restart when it changes."""
    p, window = protocol, protocol.window
    start = now_ns()
    cold = run(1)
    block, calls = 1, 0
    trace: list[float] = []
    recent: list[float] = []          # per-call times since the block size last changed
    settled = False
    while True:
        per_call = run(block) / block
        calls += block
        trace.append(per_call)
        recent.append(per_call)
        elapsed = (now_ns() - start) / 1e9
        wanted = calls_per_sample(statistics.median(recent[-3:]), p.block_s, p.min_calls_per_sample)
        if wanted >= 2 * block or 2 * wanted <= block:
            block, recent = wanted, []
        elif calls >= p.warmup_calls and elapsed >= p.warmup_s and len(recent) >= 2 * window:
            before = statistics.median(recent[-2 * window:-window])
            last = statistics.median(recent[-window:])
            if abs(last - before) <= p.settle * last:
                settled = True
                break
        if elapsed >= p.warmup_max_s and calls >= p.warmup_calls:
            break
    call_s = statistics.median(recent[-window:] or trace[-1:])
    return WarmUp(cold, calls, elapsed, settled, call_s,
                  calls_per_sample(call_s, p.block_s, p.min_calls_per_sample), tuple(trace))


def interleave(runs: Mapping[str, BlockRunner], calls: Mapping[str, int], now_ns: NowNs,
               protocol: Protocol, progress: Progress = lambda it, **_: it) -> Timed:
    """Time every role in turns of alternating order until the stopping rule holds."""
    p, names = protocol, tuple(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = now_ns()
    next_check = p.min_samples        # the CI test sorts every sample: run it every ~5% more
    elapsed = 0.0
    for turn in progress(itertools.count(), desc="timing", unit="turn"):
        for name in (names if turn % 2 == 0 else names[::-1]):
            run, block = runs[name], calls[name]
            for _ in range(p.rewarm_blocks):
                run(block)
            samples[name].extend(run(block) / block for _ in range(p.turn_samples))
        count, elapsed = len(samples[names[0]]), (now_ns() - start) / 1e9
        if count < p.min_samples or elapsed < p.min_time_s:
            continue
        if count >= next_check:
            if _ci_met(samples, p.ci_target):
                break
            next_check = count + max(1, count // 20)
        if elapsed >= p.max_time_s:
            break
    return Timed(samples, names, p.turn_samples, elapsed, _ci_met(samples, p.ci_target))


def _ci_met(samples: Mapping[str, list[float]], target: float) -> bool:
    return all(median_ci_width(values) <= target for values in samples.values())


def measure(runs: Mapping[str, BlockRunner], now_ns: NowNs, protocol: Protocol,
            progress: Progress = lambda it, **_: it) -> tuple[dict[str, WarmUp], Timed]:
    """Warm every role up (one after the other), then time them interleaved."""
    warm = {name: warm_up(run, now_ns, protocol) for name, run in runs.items()}
    timed = interleave(runs, {name: w.calls_per_sample for name, w in warm.items()}, now_ns, protocol, progress)
    return warm, timed
