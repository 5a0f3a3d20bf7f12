"""benchmark: latency of the optimized model and the baseline, measured alike in one run,
plus how far the optimized model's outputs and task metric moved from the baseline's."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ptflow import fidelity, measure
from ptflow.accuracy import AccuracyConfig, judge
from ptflow.artifact import RUNNABLE, Artifact, Form
from ptflow.errors import ConfigError, InputError, Problem
from ptflow.files import write_atomic
from ptflow.spec import call, flatten_outputs, select_output
from ptflow.stage import Environment, RunContext, register_stage


@dataclass(frozen=True)
class BenchmarkConfig:
    warmup: int = 10          # untimed calls per model before timing
    iters: int = 100          # timed calls per model
    rounds: int = 5           # alternate baseline/candidate this many times (drift hits both)
    batch: int = 0            # which eval batch to time
    baseline: bool = True     # also time the unoptimized model the same way
    fidelity: bool = True     # accuracy and output agreement on every eval batch
    max_dispersion: float = 0.25  # IQR/median of a model's samples above this marks the run unstable

    def __post_init__(self) -> None:
        for key, low in (("warmup", 0), ("iters", 2), ("rounds", 1), ("batch", 0)):
            if getattr(self, key) < low:
                raise ConfigError.single(key, getattr(self, key), f"an integer >= {low}")
        if not self.max_dispersion > 0:   # also rejects NaN
            raise ConfigError.single("max_dispersion", self.max_dispersion,
                                     "a ratio > 0 (IQR/median of the timed samples), e.g. 0.25")
        if self.rounds > self.iters:
            raise ConfigError.single("rounds", self.rounds, f"at most iters ({self.iters})")


@dataclass(frozen=True)
class BenchmarkStageConfig:
    benchmark: BenchmarkConfig
    accuracy: AccuracyConfig


@register_stage("benchmark", config=BenchmarkStageConfig, keys=("benchmark", "accuracy"))
class BenchmarkStage:
    """Time baseline and candidate alike; score output fidelity; judge the accuracy change.

    Warm-up, alternating rounds and sync make the timings comparable; accuracy.max_drop
    is the gate."""

    requires = frozenset({"baseline"})
    provides = frozenset({"latency"})

    def __init__(self, config: BenchmarkStageConfig):
        self.config = config.benchmark
        self.accuracy = config.accuracy

    def consumes(self) -> frozenset[Form]:
        return RUNNABLE

    def produces(self, given: Form | None) -> Form:
        return given

    def preflight(self, env: Environment) -> list[Problem]:
        metric = (env.config.get("data") or {}).get("metric")
        if self.accuracy.enforce and not (self.config.fidelity and metric):
            return [Problem("accuracy.enforce", True, "a pipeline that measures the task metric's change: "
                            "benchmark.fidelity=true and a data.metric", "or set accuracy.enforce=false")]
        return []

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        cfg = self.config
        if cfg.batch >= len(artifact.batches):
            raise InputError(f"benchmark.batch={cfg.batch} but the data has {len(artifact.batches)} "
                             f"eval batch(es); pick 0..{len(artifact.batches) - 1}")
        inputs = artifact.batches[cfg.batch].inputs
        fns = {"candidate": lambda: call(artifact.model, inputs)}
        if cfg.baseline:
            fns["baseline"] = lambda: call(artifact.baseline.model, inputs)
        sync = torch.cuda.synchronize if artifact.device.startswith("cuda") else None
        with torch.inference_mode():
            samples = measure.paired_latency(fns, cfg.warmup, cfg.iters, cfg.rounds, sync, ctx.progress)
        metrics: dict[str, float] = {"benchmark.batch_size": float(inputs.batch_size())}
        stats = {name: measure.summarize(values) for name, values in samples.items()}
        for name, stat in stats.items():
            metrics.update(stat.as_metrics(f"benchmark.{name}"))
            metrics[f"benchmark.{name}.throughput_per_s"] = inputs.batch_size() / (stat.p50_ms / 1e3)
        if cfg.baseline:
            metrics["benchmark.speedup_p50"] = stats["baseline"].p50_ms / stats["candidate"].p50_ms
            metrics["benchmark.speedup_mean"] = stats["baseline"].mean_ms / stats["candidate"].mean_ms
        unstable, warning = stability(stats, cfg.max_dispersion, ctx.settings.get("threads"))
        metrics["benchmark.unstable"] = 1.0 if unstable else 0.0
        if warning:
            ctx.warn("benchmark.unstable", warning)
        result = artifact
        if cfg.fidelity:
            metrics.update(_fidelity(artifact, ctx))
            result = self._judge(artifact, metrics, ctx)
        path = ctx.path("benchmark", "latency_samples.json")
        write_atomic(path, json.dumps({name: [s * 1e3 for s in values] for name, values in samples.items()}))
        return result.with_metrics(metrics).with_files({"latency_samples": path})

    def _judge(self, artifact: Artifact, metrics: dict[str, float], ctx: RunContext) -> Artifact:
        """The accuracy gate: tag accepted=true|false; with accuracy.enforce, reject the run."""
        baseline = artifact.baseline
        if baseline is None or baseline.metric_name is None:
            return artifact
        name = baseline.metric_name
        verdict = judge(self.accuracy, name, baseline.metric, metrics[f"benchmark.{name}"],
                        fidelity.metric(name).higher_is_better)
        metrics.update(verdict.metrics())
        tagged = artifact.with_tags({"accepted": "true" if verdict.accepted else "false"})
        if verdict.accepted:
            return tagged
        if self.accuracy.enforce:
            return tagged.evolve(rejected=f"accuracy gate: {verdict.explain()}; the recipe is rejected "
                                          "and nothing is exported (accuracy.enforce=true)")
        ctx.warn("accuracy", f"{verdict.explain()}: tagged accepted=false")
        return tagged


def stability(stats: Mapping[str, measure.LatencyStats], max_dispersion: float,
              threads: object = None) -> tuple[bool, str | None]:
    """Is any model's timing too noisy to trust (dispersion = IQR/median above the limit)?
    Returns the verdict and, when unstable, a warning naming the models and what to do."""
    noisy = {name: stat.dispersion for name, stat in stats.items() if stat.dispersion > max_dispersion}
    if not noisy:
        return False, None
    found = ", ".join(f"{name} {value:.2f}" for name, value in sorted(noisy.items()))
    advice = ["on a quieter machine"]
    if threads != 1:   # one intra-op thread cannot spin-wait on a descheduled sibling
        advice.append("with device.threads=1" + (f" (now {threads})" if threads is not None else ""))
    advice.append("with more benchmark.iters")
    return True, (f"timings are unstable: IQR/median of {found} exceeds benchmark.max_dispersion="
                  f"{max_dispersion:g}; latencies and speedups from this run may be far off. "
                  f"Rerun {', '.join(advice[:-1])} or {advice[-1]}")


def _fidelity(artifact: Artifact, ctx: RunContext) -> dict[str, float]:
    baseline = artifact.baseline
    leaves, task_outputs = [], []
    with torch.inference_mode():
        for batch in ctx.progress(artifact.batches, desc="fidelity", unit="batch"):
            result = call(artifact.model, batch.inputs)
            leaves.append(fidelity.detach_leaves(flatten_outputs(result)))
            task_outputs.append(select_output(result, artifact.output_key).detach().float().cpu())
    try:
        metrics = {f"benchmark.{k}": v for k, v in
                   fidelity.agreement(baseline.outputs, leaves, baseline.task_output, task_outputs).items()}
    except ValueError as error:
        raise InputError(str(error)) from None
    if baseline.metric_name is not None:
        value = fidelity.metric(baseline.metric_name).fn(task_outputs, [b.target for b in artifact.batches])
        metrics[f"benchmark.{baseline.metric_name}"] = value
        metrics[f"benchmark.{baseline.metric_name}_delta"] = value - baseline.metric
    return metrics
