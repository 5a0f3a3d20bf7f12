"""benchmark's untimed passes and pictures, run after timing (and after the device lock is
released): peak memory per call, FLOPs and the share of the device's peak, torch.profiler's
table and trace, the raw samples as CSV and the latency pictures; and the fidelity pass (the
candidate's outputs and task metric against the baseline's, on every eval batch)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact
from ptflow.core.errors import InputError
from ptflow.core.spec import ModelInputs, call, flatten_outputs, select_output
from ptflow.core.stage import RunContext
from ptflow.decide import fidelity
from ptflow.measure import plots
from ptflow.stages.benchmark import profile as profiling
from ptflow.stages.benchmark.roofline import compute_precision, flops_per_call, roofline_metrics

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


def untimed(cfg: profiling.ProfileConfig, artifact: Artifact, models: dict[str, Any], inputs: ModelInputs,
            p50_ms: dict[str, float], ctx: RunContext) -> tuple[dict[str, float], dict[str, Path]]:
    """Memory, FLOPs/roofline and profiler figures for each timed model on the headline inputs."""
    import torch

    metrics: dict[str, float] = {}
    files: dict[str, Path] = {}
    fns = {role: (lambda m=model: call(m, inputs)) for role, model in models.items()}
    if cfg.memory:
        for role, fn in fns.items():
            figures = profiling.memory_pass(fn, artifact.device, role)
            metrics.update(figures.metrics)
            for note in figures.notes:
                ctx.warn("benchmark.memory", note)
            if isinstance(models[role], torch.nn.Module):
                metrics[f"benchmark.{role}.param_buffer_mb"] = profiling.param_buffer_mb(models[role])
    if cfg.flops:
        metrics.update(_roofline(cfg, artifact, fns, inputs, p50_ms, ctx))
    if cfg.profile:
        device_type = artifact.device.split(":")[0]
        for role, fn in fns.items():
            written = profiling.profile_pass(fn, cfg.profile_calls, cfg.activities_on(device_type),
                                             ctx.run_dir / "benchmark" / "profile" / role)
            files[f"benchmark.{role}.profile_table"] = written["profile_table"]
            files[f"benchmark.{role}.trace"] = written["trace"]
    return metrics, files


def _roofline(cfg: profiling.ProfileConfig, artifact: Artifact, fns: dict[str, Any], inputs: ModelInputs,
              p50_ms: dict[str, float], ctx: RunContext) -> dict[str, float]:
    """FLOPs counted once, on the eager baseline (compiled, AOTI, ORT and quantized subclasses
    hide their arithmetic from the counter): the model's work, reached at each role's p50."""
    count = flops_per_call(lambda: call(artifact.baseline.model, inputs))
    if count.flops is None:
        ctx.warn("benchmark.flops", f"FLOPs not reported: {count.reason}")
        return {}
    metrics = {"benchmark.flops_per_call": count.flops}
    method = next((r.config.get("method") for r in artifact.lineage if r.name == "quantize"), None)
    matmul = str(ctx.settings.get("matmul_precision", "highest"))
    device_name = str(ctx.settings.get("device_name", ""))
    for role in fns:
        precision = compute_precision(method if role == "candidate" else None, artifact.dtype, matmul)
        figures = roofline_metrics(role, count.flops, p50_ms[role], cfg.peak(device_name, precision))
        metrics.update(figures.metrics)
        for note in figures.notes:
            ctx.warn("benchmark.peak", note)
    return metrics


def pictures(cfg: profiling.ProfileConfig, sizes: list[dict[str, Any]], rows: list[dict[str, Any]],
             roles: int, ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """Raw samples as CSV (always, written now); and the request for the pictures (drawn apart:
    ``drawing``): the histogram and, for several batch sizes, latency vs batch. Returns the files
    (the pictures' paths among them) and the request."""
    files = {"benchmark.samples_csv": plots.samples_csv(sizes, ctx.path("benchmark", "latency_samples.csv"))}
    request: dict[str, Any] = {}
    if cfg.plots:
        request["histogram"] = {"samples_ms": sizes[0]["samples_ms"],
                                "path": str(ctx.path("benchmark", "latency_histogram.png"))}
        files["benchmark.histogram"] = Path(request["histogram"]["path"])
        if len(rows) > roles:   # more than one batch size
            request["latency_vs_batch"] = {"rows": rows, "path": str(ctx.path("benchmark", "latency_vs_batch.png"))}
            files["benchmark.latency_vs_batch"] = Path(request["latency_vs_batch"]["path"])
    return files, request


def fidelity_pass(artifact: Artifact, ctx: RunContext) -> dict[str, float]:
    """How far the candidate's outputs and task metric moved from the baseline's, on every eval batch."""
    import torch

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
