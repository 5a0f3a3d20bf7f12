"""benchmark's timing: the inputs at each batch size, the block runners that time calls on
CPU and CUDA, one batch size measured by ptflow.measure.protocol, and what it reports.

Latency mode: CPU blocks are timed with ``perf_counter_ns`` (sub-millisecond calls in
blocks); on CUDA every sample is one call between CUDA events, then synchronised.
Throughput mode: calls back to back with no per-call sync, several per sample; on CUDA
with ``inflight`` > 1 every batch starts in pinned host memory and is copied on a side
stream while earlier batches compute (the copy is part of what is measured).
"""
from __future__ import annotations

import enum
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptflow.core.errors import InputError
from ptflow.core.spec import BATCH_DIM, InputSpec, ModelInputs, call
from ptflow.measure import protocol as measure
from ptflow.measure.stats import LatencyStats, Ratio, median_ci, paired_ratio, summarize

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

ROLES = ("baseline", "candidate")   # the order of even turns (odd turns run reversed)


class Mode(str, enum.Enum):
    LATENCY = "latency"          # one call per sample (blocks for sub-ms calls on CPU), fenced
    THROUGHPUT = "throughput"    # batches back to back, no per-call sync: items/s

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SizeResult:
    """One batch size, every role measured: warm-up, timed samples, statistics, speedup."""

    batch_size: int
    warm: Mapping[str, measure.WarmUp]
    timed: measure.Timed
    stats: Mapping[str, LatencyStats]
    speedup: Ratio | None          # baseline over candidate time, paired; None without a baseline

    def role_metrics(self, prefix: str, role: str) -> dict[str, float]:
        stat, warm = self.stats[role], self.warm[role]
        low, high = median_ci(self.timed.samples_s[role])
        return {**stat.as_metrics(f"{prefix}.{role}"),
                f"{prefix}.{role}.throughput_per_s": self.batch_size / (stat.p50_ms / 1e3),
                f"{prefix}.{role}.cold_ms": warm.cold_s * 1e3,
                f"{prefix}.{role}.p50_ci_low_ms": low * 1e3,
                f"{prefix}.{role}.p50_ci_high_ms": high * 1e3,
                f"{prefix}.{role}.calls_per_sample": float(warm.calls_per_sample),
                f"{prefix}.{role}.warmup_calls": float(warm.calls),
                f"{prefix}.{role}.warmup_settled": float(warm.settled)}

    def headline_metrics(self) -> dict[str, float]:
        """Every figure of this size under `benchmark.`: the run's headline."""
        metrics = {"benchmark.batch_size": float(self.batch_size), "benchmark.timed_s": self.timed.seconds,
                   "benchmark.ci_met": float(self.timed.ci_met)}
        for role in self.stats:
            metrics.update(self.role_metrics("benchmark", role))
        if self.speedup is not None:
            base, cand = self.stats["baseline"], self.stats["candidate"]
            metrics.update({"benchmark.speedup_p50": self.speedup.value, "benchmark.speedup_ci_low": self.speedup.low,
                            "benchmark.speedup_ci_high": self.speedup.high,
                            "benchmark.speedup_mean": base.mean_ms / cand.mean_ms})
        return metrics

    def size_metrics(self) -> dict[str, float]:
        """The few figures a latency-vs-batch comparison needs, under `benchmark.bs<N>.`."""
        prefix = f"benchmark.bs{self.batch_size}"
        metrics: dict[str, float] = {}
        for role, stat in self.stats.items():
            metrics.update({f"{prefix}.{role}.p50_ms": stat.p50_ms, f"{prefix}.{role}.p95_ms": stat.p95_ms,
                            f"{prefix}.{role}.throughput_per_s": self.batch_size / (stat.p50_ms / 1e3)})
        if self.speedup is not None:
            metrics.update({f"{prefix}.speedup_p50": self.speedup.value,
                            f"{prefix}.speedup_ci_low": self.speedup.low,
                            f"{prefix}.speedup_ci_high": self.speedup.high})
        return metrics

    def rows(self) -> list[dict[str, Any]]:
        """One row per role for benchmark/batch_sizes.json (what a latency-vs-batch plot reads)."""
        rows = []
        for role in self.stats:
            figures = self.role_metrics("", role)
            row: dict[str, Any] = {"batch_size": self.batch_size, "role": role}
            row.update({key.removeprefix(f".{role}."): value for key, value in figures.items()})
            for key in ("n", "calls_per_sample", "warmup_calls"):
                row[key] = int(row[key])
            for key in ("p90_supported", "p95_supported", "p99_supported", "warmup_settled"):
                row[key] = bool(row[key])
            if self.speedup is not None:
                row.update(speedup_p50=self.speedup.value, speedup_ci_low=self.speedup.low,
                           speedup_ci_high=self.speedup.high)
            rows.append(row)
        return rows

    def samples_record(self) -> dict[str, Any]:
        """Raw samples for benchmark/latency_samples.json: ms per call of each sample; sample i
        of every role came from turn i // turn_samples (even turns in `order`, odd ones reversed)."""
        return {"batch_size": self.batch_size, "order": list(self.timed.order),
                "turn_samples": self.timed.turn_samples,
                "calls_per_sample": {role: w.calls_per_sample for role, w in self.warm.items()},
                "cold_ms": {role: w.cold_s * 1e3 for role, w in self.warm.items()},
                "warmup_ms": {role: [s * 1e3 for s in w.trace_s] for role, w in self.warm.items()},
                "samples_ms": {role: [s * 1e3 for s in values] for role, values in self.timed.samples_s.items()}}


def repeat_record(result: SizeResult) -> dict[str, Any]:
    """One batch size as a repeat reports it (plain data): the speedup [value, low, high], each
    role's p50 and IQR/median, and the raw samples."""
    speedup = result.speedup
    return {**result.samples_record(), "speedup": None if speedup is None else [speedup.value, speedup.low, speedup.high],
            "p50_ms": {role: stat.p50_ms for role, stat in result.stats.items()},
            "dispersion": {role: stat.dispersion for role, stat in result.stats.items()}}


def scope(processes: int) -> str:
    """What the speedup's interval covers, in words (tag benchmark.ci_scope)."""
    return "one process" if processes <= 1 else f"{processes} processes"


def resized(inputs: ModelInputs, spec: InputSpec, size: int) -> ModelInputs:
    """The eval batch at `size` rows: its first rows, or its rows repeated in order. Only for
    inputs whose dim 0 is the dynamic batch dim (a fixed-size model cannot take another size)."""
    import torch

    rows = inputs.batch_size()
    if size == rows:
        return inputs
    fixed = [t.name for t in spec.tensors if t.dynamic_dims().get(0) != BATCH_DIM]
    if fixed:
        raise InputError(f"benchmark.batch_sizes: batch size {size} needs a dynamic batch dim, but input(s) "
                         f"{', '.join(fixed)} have a fixed dim 0 (input spec: {spec}); set "
                         f"data.dynamic_batch=true, or benchmark.batch_sizes=null to time the eval batch of {rows}")
    low, high = spec.bounds(BATCH_DIM)
    if (low is not None and size < low) or (high is not None and size > high):
        raise InputError(f"benchmark.batch_sizes: batch size {size} is outside the batch dim's range "
                         f"{low}..{high} of the input spec; pick sizes within it")
    index = torch.arange(size) % rows
    return inputs.map(lambda t: t.index_select(0, index.to(t.device)).contiguous())


def block_runner(model: Any, inputs: ModelInputs, device: str, mode: Mode, inflight: int) -> measure.BlockRunner:
    """A runner timing k calls of `model` on `inputs` as `mode` and `device` require."""
    if not device.startswith("cuda"):
        return measure.cpu_block(lambda: call(model, inputs))   # CPU ops finish before they return
    from ptflow.stages.benchmark.cuda_timing import CudaFeed, cuda_events_block

    if mode is Mode.THROUGHPUT and inflight > 1:
        return cuda_events_block(CudaFeed(model, inputs, inflight))
    return cuda_events_block(lambda: call(model, inputs))


def measure_size(models: Mapping[str, Any], inputs: ModelInputs, device: str, mode: Mode, inflight: int,
                 protocol: measure.Protocol, progress: Callable[..., Any], seed: int) -> SizeResult:
    """Warm up and time every model on `inputs` (already on `device`), interleaved."""
    runs = {role: block_runner(model, inputs, device, mode, inflight) for role, model in models.items()}
    with warnings.catch_warnings():
        # torchao's tensor subclasses lack a cache-hash hook; inductor says so once per type while
        # compiling (a new batch size recompiles at its cold call): noise, not news
        warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching")
        warm, timed = measure.measure(runs, time.perf_counter_ns, protocol,
                                      lambda it, **kw: progress(it, **{**kw, "desc": f"timing bs{inputs.batch_size()}"}))
    stats = {role: summarize(values) for role, values in timed.samples_s.items()}
    speedup = None
    if "baseline" in timed.samples_s and "candidate" in timed.samples_s:
        speedup = paired_ratio(timed.samples_s["baseline"], timed.samples_s["candidate"], seed)
    return SizeResult(inputs.batch_size(), warm, timed, stats, speedup)


def protocol_for(cfg: Any, device: str, mode: Mode, inflight: int) -> measure.Protocol:
    """benchmark's keys as a measure.Protocol. CUDA latency samples are single calls (events
    time them precisely); throughput samples hold at least two rounds of the batches in flight."""
    cuda_latency = device.startswith("cuda") and mode is Mode.LATENCY
    return measure.Protocol(
        warmup_calls=cfg.warmup, warmup_s=cfg.warmup_s, warmup_max_s=cfg.warmup_max_s, settle=cfg.settle,
        min_samples=cfg.iters, min_time_s=cfg.min_time_s, max_time_s=cfg.max_time_s, ci_target=cfg.ci_target,
        block_s=0.0 if cuda_latency else cfg.block_s, turn_samples=cfg.turn_samples,
        min_calls_per_sample=2 * inflight if mode is Mode.THROUGHPUT else 1)


def dispersions(results: Sequence[SizeResult], by_size: bool) -> dict[str, float]:
    """IQR/median of every timing, named by role (and batch size when several were timed)."""
    return {(f"bs{r.batch_size} {role}" if by_size else role): stat.dispersion
            for r in results for role, stat in r.stats.items()}
