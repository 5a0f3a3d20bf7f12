"""What ``benchmark.*`` holds (``conf/benchmark/*.yaml``), checked when the plan is built."""
from __future__ import annotations

from dataclasses import dataclass

from ptflow.core.errors import ConfigError, Problem
from ptflow.stages.benchmark.profile import ProfileConfig
from ptflow.stages.benchmark.timing import Mode

MAX_REPEATS = 50


@dataclass(frozen=True)
class BenchmarkConfig(ProfileConfig):   # + memory, flops, peak_tflops, profile*, plots: the untimed passes
    mode: Mode = Mode.LATENCY
    batch: int = 0                # which eval batch to time (and to slice or repeat for batch_sizes)
    batch_sizes: tuple[int, ...] | None = None   # null: the eval batch's size
    baseline: bool = True
    fidelity: bool = True
    warmup: int = 10              # warm-up: at least this many calls per model ...
    warmup_s: float = 0.2         # ... and this many seconds, then until the rolling median settles
    warmup_max_s: float = 10.0
    settle: float = 0.02
    iters: int = 100              # timed: at least this many samples per model ...
    min_time_s: float = 0.5       # ... and this many seconds, then until the median's CI is tight
    max_time_s: float = 10.0
    ci_target: float = 0.02
    block_s: float = 0.001
    turn_samples: int = 10        # samples of one model in a row, after untimed re-warm calls
    inflight: int | None = None   # throughput mode: batches in flight (null: 2 on CUDA, 1 on CPU)
    max_dispersion: float = 0.10  # IQR/median above this: unstable
    invalid_dispersion: float = 0.25   # IQR/median above this: invalid
    lock: bool = True             # one timed section per device (cores / GPU) at a time, across processes
    repeats: int = 1              # processes the timing runs in: this one + repeats-1 fresh workers (repeats.py)
    rounds: int | None = None     # removed: baseline and candidate now alternate in turns

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.rounds is not None:
            problems.append(Problem("rounds", self.rounds, "no value: the key was removed",
                                    "baseline and candidate now alternate in short turns of benchmark.turn_samples "
                                    "samples (A B, B A, ...) until the median's CI is tight; set benchmark.iters "
                                    "(the minimum samples) and drop benchmark.rounds"))
        for key, low in (("warmup", 0), ("iters", 2), ("batch", 0), ("turn_samples", 1), ("repeats", 1)):
            if getattr(self, key) < low:
                problems.append(Problem(key, getattr(self, key), f"an integer >= {low}"))
        for key, example in (("warmup_max_s", "10"), ("max_time_s", "10"), ("settle", "0.02"),
                             ("ci_target", "0.02"), ("max_dispersion", "0.10"), ("invalid_dispersion", "0.25")):
            if not getattr(self, key) > 0:   # also rejects NaN
                problems.append(Problem(key, getattr(self, key), f"a number > 0, e.g. {example}"))
        for key in ("warmup_s", "min_time_s", "block_s"):
            if not getattr(self, key) >= 0:
                problems.append(Problem(key, getattr(self, key), "a number >= 0 (seconds)"))
        for low, high in (("warmup_s", "warmup_max_s"), ("min_time_s", "max_time_s")):
            if getattr(self, low) > getattr(self, high):
                problems.append(Problem(high, getattr(self, high), f"at least {low} ({getattr(self, low):g})"))
        problems.extend(_batch_size_problems(self.batch_sizes))
        if self.repeats > MAX_REPEATS:
            problems.append(Problem("repeats", self.repeats, f"an integer from 1 to {MAX_REPEATS} (processes the "
                                    "timing runs in)", "benchmark=rigorous repeats 10 times; more narrows the "
                                    "interval by little and costs a process each"))
        if self.inflight is not None and self.inflight < 1:
            problems.append(Problem("inflight", self.inflight, "null or an integer >= 1 (batches in flight)"))
        if problems:
            raise ConfigError(problems)


def _batch_size_problems(batch_sizes: tuple[int, ...] | None) -> list[Problem]:
    if batch_sizes is None:
        return []
    sizes = list(batch_sizes)
    wrong = ("an empty list times nothing: null times the eval batch" if not sizes else
             ", ".join(f"{size} is not a batch size" for size in sizes if size < 1) or
             ", ".join(f"{size} is listed twice" for size in sorted(set(sizes)) if sizes.count(size) > 1))
    return [Problem("batch_sizes", sizes, "null (the eval batch's size) or a list of distinct batch sizes >= 1, "
                    "e.g. [1, 8, 64] (the first is the headline)", wrong)] if wrong else []
