"""benchmark: latency of the optimized model and the baseline, measured alike in one run,
plus how far the optimized model's outputs and task metric moved from the baseline's.

The protocol (ptflow.measure.protocol) warms each model up until its timing settles, then times
baseline and candidate interleaved until the median's confidence interval is tight; the
speedup is a paired ratio with a bootstrap CI (ptflow.measure.stats). Timing lives in
timing.py beside it; this file holds the config, the plan-time checks and the verdicts.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ptflow.core.artifact import RUNNABLE, Artifact, Form
from ptflow.core.errors import InputError, Problem, first_line
from ptflow.core.files import write_atomic
from ptflow.core.stage import Environment, Note, RunContext, ignore_warning, register_stage
from ptflow.decide import fidelity
from ptflow.decide.accuracy import AccuracyConfig, describe, judge
from ptflow.measure import device_info, device_lock
from ptflow.measure.stats import Ratio, Stability, classify
from ptflow.stages.benchmark import repeats
from ptflow.stages.benchmark.drawing import Drawing
from ptflow.stages.benchmark.passes import fidelity_pass, pictures, untimed
from ptflow.stages.benchmark.config import BenchmarkConfig
from ptflow.stages.benchmark.timing import (ROLES, Mode, SizeResult, dispersions, measure_size, protocol_for,
                                            repeat_record, resized, scope)

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

CUDA_INFLIGHT = 2      # benchmark.inflight=null on CUDA: one batch copies while the one before computes


@dataclass(frozen=True)
class BenchmarkStageConfig:
    benchmark: BenchmarkConfig
    accuracy: AccuracyConfig


@register_stage("benchmark", config=BenchmarkStageConfig, keys=("benchmark", "accuracy"))
class BenchmarkStage:
    """Time baseline and candidate alike; score output fidelity; judge the accuracy change.

    Warm-up until stable, interleaved samples and a paired speedup make the timings
    comparable; accuracy.max_drop is the gate."""

    requires = frozenset({"baseline"})
    provides = frozenset({"latency"})

    def __init__(self, config: BenchmarkStageConfig):
        self.config = config.benchmark
        self.accuracy = config.accuracy
        self._drawing: Drawing | None = None   # the pictures being drawn (see stop)
        self._warn = ignore_warning

    def consumes(self) -> frozenset[Form]:
        return RUNNABLE

    def produces(self, given: Form | None) -> Form:
        return given

    def preflight(self, env: Environment) -> list[Problem]:
        cfg, problems = self.config, []
        metric = (env.config.get("data") or {}).get("metric")
        if self.accuracy.enforce and not (cfg.fidelity and metric):
            problems.append(Problem("accuracy.enforce", True, "a pipeline that measures the task metric's change: "
                                    "benchmark.fidelity=true and a data.metric", "or set accuracy.enforce=false"))
        if cfg.batch_sizes is not None and (env.config.get("data") or {}).get("dynamic_batch") is False:
            problems.append(Problem("benchmark.batch_sizes", list(cfg.batch_sizes), "null while data.dynamic_batch=false "
                                    "(the model's batch dim is fixed)",
                                    "set data.dynamic_batch=true, or benchmark.batch_sizes=null"))
        if cfg.mode is Mode.THROUGHPUT and env.device_type != "cuda" and (cfg.inflight or 1) > 1:
            problems.append(Problem("benchmark.inflight", cfg.inflight, f"null or 1 on device={env.device_type}: CPU calls "
                                    "run to completion before they return, so there is no copy or compute to "
                                    "overlap", "set benchmark.inflight=null, or device=cuda"))
        problems.extend(cfg.problems(env.device_type))
        return problems

    def explain(self, env: Environment) -> list[Note]:
        cfg = self.config
        sizes = f"batch sizes {list(cfg.batch_sizes)}" if cfg.batch_sizes else f"eval batch {cfg.batch}"
        roles = f"baseline and candidate in alternating turns of {cfg.turn_samples}" if cfg.baseline \
            else f"the candidate in turns of {cfg.turn_samples}"
        how = "" if cfg.mode is Mode.LATENCY else \
            f", {self.inflight(env.device_type)} batch(es) in flight, no per-call sync"
        return [Note(f"{cfg.mode} on {sizes}{how}: warm-up >= {cfg.warmup} calls and {cfg.warmup_s:g} s until "
                     f"the median settles within {cfg.settle * 100:g}% (<= {cfg.warmup_max_s:g} s); then {roles}, "
                     f">= {cfg.iters} samples and {cfg.min_time_s:g} s until the median's 95% CI is within "
                     f"±{cfg.ci_target * 100:g}% (<= {cfg.max_time_s:g} s)"), Note(self._repeats_note()),
                Note(self._gate(env))]

    def _repeats_note(self) -> str:
        n = self.config.repeats
        if n <= 1:
            return ("repeats: 1 — timed in this process only: the speedup's interval covers the noise within it, "
                    "not the next process (benchmark.repeats=5 covers five)")
        return (f"repeats: {n} — this process, then {n - 1} fresh process(es) rebuilding the run and timing alike, "
                "one at a time: one 95% interval over all of them (ptflow.measure.hierarchy)")

    def _gate(self, env: Environment) -> str:
        """The accuracy gate in words: which metric, how far it may move, in which mode and why."""
        name = (env.config.get("data") or {}).get("metric")
        if not name:
            return "accuracy gate: none (data.metric=null: no task metric to judge)"
        if not self.config.fidelity:
            return f"accuracy gate: none (benchmark.fidelity=false: {name} is not measured on the candidate)"
        if name not in fidelity.metric_names():   # the load stage reports the unknown name
            return f"accuracy gate: on {name}"
        return describe(self.accuracy, name, fidelity.metric(name).higher_is_better)

    def inflight(self, device_type: str) -> int:
        if self.config.inflight is not None:
            return self.config.inflight
        return CUDA_INFLIGHT if device_type == "cuda" else 1

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        cfg = self.config
        if cfg.batch >= len(artifact.batches):
            raise InputError(f"benchmark.batch={cfg.batch} but the data has {len(artifact.batches)} "
                             f"eval batch(es); pick 0..{len(artifact.batches) - 1}")
        results, timing = self._time(artifact, ctx)
        workers = self._spawn_repeats(ctx)   # they build while this process runs its untimed passes
        try:
            metrics = {**results[0].headline_metrics(), **timing}
            if cfg.batch_sizes is not None:
                for result in results:
                    metrics.update(result.size_metrics())
            headline = results[0]
            models = self._models(artifact)
            inputs = resized(artifact.batches[cfg.batch].inputs, artifact.inputs, headline.batch_size)
            # after timing, outside the lock: probes slow the calls they watch (each pass runs in inference_mode)
            extra, files = untimed(cfg, artifact, models, inputs,
                                   {role: headline.stats[role].p50_ms for role in models}, ctx)
            metrics.update(extra)
            if cfg.fidelity:
                metrics.update(fidelity_pass(artifact, ctx))
            others, combined = self._run_repeats(artifact, results, workers, metrics, ctx)
        finally:
            repeats.stop_all(workers)
        stability = self._stability(results, others, metrics, ctx)
        result = artifact.with_tags({"benchmark.stability": str(stability),
                                     "benchmark.ci_scope": scope(int(metrics["benchmark.repeats"]))})
        if cfg.fidelity:
            result = self._judge(result, metrics, ctx)
        return result.with_metrics(metrics).with_files({**self._write(results, others, combined, ctx), **files})

    def repeat(self, artifact: Artifact, ctx: RunContext) -> dict[str, object]:
        """In a repeat worker (ptflow.app.repeat_worker): time as ``run`` does, report plain data."""
        return {"sizes": [repeat_record(r) for r in self._time_sizes(artifact, ctx)]}

    def _spawn_repeats(self, ctx: RunContext) -> list[repeats.Worker]:
        wanted = self.config.repeats
        if wanted <= 1:
            return []
        if ctx.rebuild is None:
            ctx.warn("benchmark.repeats", f"benchmark.repeats={wanted} needs ptflow's job runner to rebuild the run "
                     "in fresh processes, and this run has none (ptflow used as a library): timed in this process "
                     "only, and its interval covers this process only")
            return []
        cache = ctx.cache.root if ctx.cache is not None and ctx.cache.problem is None else None
        return repeats.start(ctx.rebuild, "benchmark", wanted - 1, ctx.run_dir / "benchmark" / "repeats",
                             str(cache) if cache else None, ctx.config_hash)

    def _run_repeats(self, artifact: Artifact, results: list[SizeResult], workers: list[repeats.Worker],
                     metrics: dict[str, float], ctx: RunContext) -> tuple[list[repeats.Worker], dict[int, Ratio]]:
        """Let every worker time in turn (holding the device lock), then put the interval over all
        processes in the headline's place; return the workers that reported and the speedup over
        all processes by batch size."""
        if not workers:
            metrics["benchmark.repeats"] = 1.0
            return [], {}
        started = time.perf_counter()
        repeats.wait_ready(workers)   # outside the lock: a rebuild may take it (see wait_ready)
        with device_lock.timed_section(artifact.device, owner=f"{ctx.run_dir} (pid {os.getpid()})",
                                       report=_say, enabled=self.config.lock):
            repeats.run_turns(workers, _say)
        reported = [w for w in workers if w.result is not None]
        for worker in workers:
            if worker.error is not None:
                ctx.warn(f"benchmark.repeat{worker.repeat}",
                         f"repeat {worker.repeat} of {len(workers) + 1} failed in its fresh process: {worker.error}; "
                         f"the speedup's interval covers the {len(reported) + 1} process(es) that reported "
                         f"(log: {worker.log})")
        metrics.update(repeats.figures(repeat_record(results[0]), reported, time.perf_counter() - started))
        metrics["benchmark.repeats"] = float(len(reported) + 1)
        by_size = {}
        for result, combined in zip(results, repeats.combined_speedups([r.speedup for r in results], reported)):
            if combined is None:
                continue
            by_size[result.batch_size] = combined.ratio
            names = (["benchmark"] if result is results[0] else []) + \
                ([f"benchmark.bs{result.batch_size}"] if self.config.batch_sizes else [])
            for name in names:
                metrics.update({f"{name}.speedup_p50": combined.ratio.value, f"{name}.speedup_ci_low": combined.ratio.low,
                                f"{name}.speedup_ci_high": combined.ratio.high})
            if result is results[0]:
                metrics["benchmark.speedup_between_sd"] = combined.spread
                if combined.processes > 1 and combined.spread > self.config.max_dispersion:
                    values = ", ".join(f"{metrics[f'benchmark.repeat.{w}.speedup_p50']:.2f}x"
                                       for w in [1] + [x.repeat for x in reported])
                    ctx.warn("benchmark.processes_disagree",
                             f"the speedup differs from process to process ({values}; sd {combined.spread:.0%}): "
                             f"this machine's state changes between processes, and the interval "
                             f"[{combined.ratio.low:.2f}, {combined.ratio.high:.2f}] is wide to cover it. "
                             "More benchmark.repeats narrow it")
        return reported, by_size

    def _models(self, artifact: Artifact) -> dict[str, object]:
        models = {"baseline": artifact.baseline.model, "candidate": artifact.model} if self.config.baseline \
            else {"candidate": artifact.model}
        return {role: models[role] for role in ROLES if role in models}

    def _time(self, artifact: Artifact, ctx: RunContext) -> tuple[list[SizeResult], dict[str, float]]:
        """Every batch size, the headline (first) size first; each size warmed up anew. The
        whole timed section holds the device lock: parallel jobs build at once but time in
        turn. Returns the results and the lock's and the GPU's figures."""
        cfg = self.config
        cuda = artifact.device.startswith("cuda")
        index = int(artifact.device.partition(":")[2] or 0) if cuda else 0
        with device_lock.timed_section(artifact.device, owner=f"{ctx.run_dir} (pid {os.getpid()})",
                                       report=_say, enabled=cfg.lock) as held:
            before = device_info.gpu_state(index) if cuda else {}
            results = self._time_sizes(artifact, ctx)
            after = device_info.gpu_state(index) if cuda else {}
        figures = {"benchmark.lock_wait_s": held.wait_s, "benchmark.timed_start": held.acquired_at,
                   "benchmark.timed_end": held.released_at or held.acquired_at}
        for when, state in (("before", before), ("after", after)):
            figures.update({f"benchmark.{k}_{when}": v for k, v in state.items() if isinstance(v, float)})
        return results, figures

    def _time_sizes(self, artifact: Artifact, ctx: RunContext) -> list[SizeResult]:
        import torch

        cfg = self.config
        eval_inputs = artifact.batches[cfg.batch].inputs
        models = self._models(artifact)
        device_type = artifact.device.split(":")[0]
        inflight = self.inflight(device_type)
        protocol = protocol_for(cfg, artifact.device, cfg.mode, inflight)
        results = []
        with torch.inference_mode():
            for size in cfg.batch_sizes or (eval_inputs.batch_size(),):
                if device_type == "cuda":   # each size starts from an empty cache, not the last size's blocks
                    torch.cuda.empty_cache()
                inputs = resized(eval_inputs, artifact.inputs, size)
                try:
                    results.append(measure_size(models, inputs, artifact.device, cfg.mode, inflight, protocol,
                                                ctx.progress, ctx.seed))
                except Exception as error:
                    if size == eval_inputs.batch_size():
                        raise
                    raise InputError(f"benchmark.batch_sizes: timing batch size {size} failed "
                                     f"({type(error).__name__}: {first_line(error)}); if the {artifact.form} model "
                                     f"takes no other batch size than the eval batch's {eval_inputs.batch_size()}, "
                                     "set benchmark.batch_sizes=null") from error
        return results

    def _stability(self, results: list[SizeResult], others: list[repeats.Worker], metrics: dict[str, float],
                   ctx: RunContext) -> Stability:
        """Classify every timing by IQR/median (over several processes: its median over them);
        record it, and warn unless stable."""
        cfg = self.config
        by_size = cfg.batch_sizes is not None
        found = {name: [value] for name, value in dispersions(results, by_size).items()}
        for worker in others:
            for name, value in repeats.dispersions_of(worker.result, by_size).items():
                found.setdefault(name, []).append(value)
        medians = {name: statistics.median(values) for name, values in found.items()}
        verdict, noisy = classify(medians, cfg.max_dispersion, cfg.invalid_dispersion)
        if others:
            metrics.update({f"benchmark.{name.replace(' ', '.')}.dispersion_repeats": value
                            for name, value in medians.items()})
            if by_size:   # the headline (first) size's under the headline's names too
                first = f"bs{results[0].batch_size} "
                metrics.update({f"benchmark.{name.removeprefix(first)}.dispersion_repeats": value
                                for name, value in medians.items() if name.startswith(first)})
        metrics["benchmark.unstable"] = float(verdict is not Stability.STABLE)
        metrics["benchmark.invalid"] = float(verdict is Stability.INVALID)
        if verdict is not Stability.STABLE:
            ctx.warn(f"benchmark.{verdict}", stability_warning(verdict, noisy, cfg, ctx.settings.get("threads")))
        return verdict

    def _write(self, results: list[SizeResult], others: list[repeats.Worker], combined: Mapping[int, Ratio],
               ctx: RunContext) -> dict[str, Path]:
        samples = ctx.path("benchmark", "latency_samples.json")
        write_atomic(samples, json.dumps({"unit": "ms per call", "mode": str(self.config.mode),
                                          "sizes": [r.samples_record() for r in results],
                                          "repeats": [{"repeat": w.repeat, "startup_s": w.startup_s,
                                                       "sizes": w.result["sizes"]} for w in others]}))
        sizes = ctx.path("benchmark", "batch_sizes.json")
        rows = [row for r in results for row in r.rows()]
        for row in rows:   # the speedup over all processes, as in the metrics
            if row["batch_size"] in combined:
                ratio = combined[row["batch_size"]]
                row.update(speedup_p50=ratio.value, speedup_ci_low=ratio.low, speedup_ci_high=ratio.high)
        write_atomic(sizes, json.dumps(rows, indent=1))
        drawn, request = pictures(self.config, [r.samples_record() for r in results], rows, len(results[0].stats), ctx)
        if request:   # drawn by a process of its own while the run goes on; waited for in stop()
            self._drawing, self._warn = Drawing(request), ctx.warn
        return {"latency_samples": samples, "batch_sizes": sizes, **drawn}

    def stop(self) -> None:
        """Called when the run stops: wait for the pictures (a warning when they failed)."""
        drawing, self._drawing = self._drawing, None
        if drawing is None:
            return
        error = drawing.finish()
        if error is not None:
            self._warn("benchmark.plots", f"the latency pictures ({', '.join(p.name for p in drawing.paths)}) "
                       f"were not drawn: {error}")

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


def _say(text: str) -> None:
    print(f"ptflow: benchmark {text}", file=sys.stderr, flush=True)


def stability_warning(verdict: Stability, noisy: Mapping[str, float], cfg: BenchmarkConfig,
                      threads: object = None) -> str:
    """What an unstable or invalid verdict means and what to do about it."""
    found = ", ".join(f"{name} {value:.2f}" for name, value in sorted(noisy.items()))
    advice = ["on a quieter machine"]
    if threads != 1:   # one intra-op thread cannot spin-wait on a descheduled sibling
        advice.append("with device.threads=1" + (f" (now {threads})" if threads is not None else ""))
    rerun = f"Rerun {' or '.join(advice)}"
    if verdict is Stability.INVALID:
        return (f"timings are invalid: IQR/median of {found} exceeds benchmark.invalid_dispersion="
                f"{cfg.invalid_dispersion:g}; this run's latencies and speedups are not a measurement "
                f"(tag benchmark.stability=invalid: comparisons leave it out). {rerun}")
    return (f"timings are unstable: IQR/median of {found} exceeds benchmark.max_dispersion="
            f"{cfg.max_dispersion:g}; latencies and speedups from this run may be off (see their CIs). {rerun}")
