"""validate: run the unoptimized model on every eval batch, check it, record the baseline."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact, Baseline, Form
from ptflow.core.errors import ConfigError, InputError, Problem
from ptflow.core.spec import call, flatten_outputs, select_output
from ptflow.core.stage import Environment, RunContext, register_stage
from ptflow.decide import fidelity

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


@dataclass(frozen=True)
class ValidateConfig:
    check_finite: bool = True
    # expected shape of the task output; null entries match any size, e.g. [null, 10]
    output_shape: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.output_shape is not None and any(d is not None and d < 0 for d in self.output_shape):
            raise ConfigError.single("output_shape", list(self.output_shape), "sizes >= 0 or null")


@register_stage("validate", config=ValidateConfig)
class ValidateStage:
    """Check outputs (shapes, finiteness) and record the baseline every later stage compares to."""

    requires = frozenset()
    provides = frozenset({"baseline"})
    cache = "disk"   # the baseline reference, shared by the jobs of a sweep (ptflow.core.stage_cache)

    def __init__(self, config: ValidateConfig):
        self.config = config

    def consumes(self) -> frozenset[Form]:
        # the baseline must be the unoptimized model: as built, or a loaded TorchScript/.pt2 file
        return frozenset({Form.EAGER, Form.SCRIPTED, Form.EXPORTED})

    def produces(self, given: Form | None) -> Form:
        return given

    def preflight(self, env: Environment) -> list[Problem]:
        return []

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        import torch

        outputs, task_outputs = [], []
        reference_shapes: dict[str, tuple[int, ...]] | None = None
        with torch.inference_mode():
            for index, batch in enumerate(ctx.progress(artifact.batches, desc="validate", unit="batch")):
                result = call(artifact.model, batch.inputs)
                leaves = flatten_outputs(result)
                if not leaves:
                    raise InputError(f"the model returned no tensors (got {type(result).__name__})")
                if self.config.check_finite:
                    _check_finite(leaves, index)
                shapes = {path: tuple(t.shape[1:]) for path, t in leaves}
                if reference_shapes is not None and shapes != reference_shapes:
                    raise InputError(f"output shapes change between eval batches: batch 0 gave "
                                     f"{reference_shapes}, batch {index} gave {shapes}")
                reference_shapes = shapes
                task = _task_output(result, artifact.output_key)
                self._check_shape(task, leaves, batch.inputs.batch_size(), index)
                if artifact.task_metric is not None:
                    fidelity.check_metric_inputs(artifact.task_metric, task, batch.target, index)
                outputs.append(fidelity.detach_leaves(leaves))
                task_outputs.append(task.detach().float().cpu().clone())
        return _with_baseline(artifact, tuple(outputs), tuple(task_outputs))

    def cache_save(self, artifact: Artifact) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The baseline reference as tensors (outputs per eval batch, task outputs) and the
        output paths; the metrics are recomputed from them on restore, never stored."""
        baseline = artifact.baseline
        tensors = {f"out.{i}.{j}": t for i, leaves in enumerate(baseline.outputs) for j, (_, t) in enumerate(leaves)}
        tensors.update({f"task.{i}": t for i, t in enumerate(baseline.task_output)})
        return tensors, {"leaves": [[path for path, _ in leaves] for leaves in baseline.outputs]}

    def cache_check(self, artifact: Artifact, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str | None:
        """Why a cached baseline is not this model's: eval batch 0 and one other chosen at
        random are run again and compared with the entry (paths, shapes, values within the
        output dtype's rounding); None when they match."""
        import torch

        batches, paths = artifact.batches, meta["leaves"]
        if len(paths) != len(batches):
            return f"it holds outputs of {len(paths)} eval batches; this run has {len(batches)}"
        picks = [0] + ([random.SystemRandom().randrange(1, len(batches))] if len(batches) > 1 else [])
        with torch.inference_mode():
            for index in picks:
                result = call(artifact.model, batches[index].inputs)
                leaves = flatten_outputs(result)
                if [path for path, _ in leaves] != paths[index]:
                    return (f"eval batch {index} gives outputs {[path for path, _ in leaves]}; "
                            f"the entry holds {paths[index]}")
                pairs = [(path, fresh, tensors[f"out.{index}.{j}"]) for j, (path, fresh) in enumerate(leaves)]
                pairs.append(("the task output", _task_output(result, artifact.output_key), tensors[f"task.{index}"]))
                for path, fresh, cached in pairs:
                    why = _differs(fresh, cached, _tolerance(fresh.dtype, artifact))
                    if why is not None:
                        return f"eval batch {index}: {path} {why}"
        return None

    def cache_restore(self, artifact: Artifact, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> Artifact:
        outputs = tuple(tuple((path, tensors[f"out.{i}.{j}"]) for j, path in enumerate(paths))
                        for i, paths in enumerate(meta["leaves"]))
        return _with_baseline(artifact, outputs, tuple(tensors[f"task.{i}"] for i in range(len(outputs))))

    def _check_shape(self, task: torch.Tensor, leaves: list[tuple[str, torch.Tensor]], batch_size: int,
                     index: int) -> None:
        shape = tuple(task.shape)
        if not shape:
            raise InputError(_scalar_output_message(task, leaves, batch_size))
        if shape[0] != batch_size:
            raise InputError(f"the task output has shape {shape} on eval batch {index}; expected the "
                             f"batch dim first ({batch_size}, ...)")
        wanted = self.config.output_shape
        if wanted is not None and (len(wanted) != len(shape)
                                   or any(w is not None and w != s for w, s in zip(wanted, shape))):
            raise InputError(f"the task output has shape {shape}; validate.output_shape expects "
                             f"{[w for w in wanted]} (null = any size)")


def _scalar_output_message(task: torch.Tensor, leaves: list[tuple[str, torch.Tensor]], batch_size: int) -> str:
    """Why a 0-dim task output is wrong, and which model.output_key would fix it. A model
    given labels (a Hugging Face model called with `labels`) returns its loss first."""
    path = next((p for p, t in leaves if t is task), "output")
    outputs = ", ".join(p.removeprefix("output.") for p, _ in leaves)
    per_example = [p.removeprefix("output.") for p, t in leaves if t.dim() and t.shape[0] == batch_size]
    lossy = path.rsplit(".", 1)[-1].lower().endswith("loss")
    text = (f"the task output {path} is a 0-dim tensor (one number for the whole batch), not one result per "
            "example" + (": a loss. A model returns its loss first when its inputs include labels (e.g. a "
                         "Hugging Face model given `labels`)" if lossy else ""))
    fix = (f"set model.output_key to a per-example output, e.g. model.output_key={per_example[0]}"
           if per_example else "make the model return per-example outputs (batch dim first)")
    if lossy:
        fix += "; or return the labels as the data's targets rather than as a model input"
    return f"{text}; the model's outputs are: {outputs}.\n  fix: {fix}"


def _check_finite(leaves: list[tuple[str, torch.Tensor]], index: int) -> None:
    import torch

    for path, tensor in leaves:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise InputError(
                f"{path} has {nan} NaN and {inf} Inf values (of {tensor.numel()}) on eval batch {index}. "
                "The unoptimized model must give finite outputs before an optimization can be judged: "
                "check the weights file and the input scaling (validate.check_finite=false skips this)")


def _task_output(result: object, key: str | None) -> torch.Tensor:
    try:
        return select_output(result, key)
    except KeyError as error:
        raise InputError(f"{error.args[0]} (set model.output_key)") from None


def _with_baseline(artifact: Artifact, outputs: tuple[tuple[tuple[str, torch.Tensor], ...], ...],
                   task_outputs: tuple[torch.Tensor, ...]) -> Artifact:
    """`artifact` with its baseline and validate's metrics, computed from the outputs (run or
    read back from the cache: a cached entry's numbers are never taken on trust)."""
    metric = _task_metric(artifact, task_outputs)
    baseline = Baseline(artifact.model, outputs, task_outputs, artifact.task_metric, metric)
    metrics = {"validate.output_leaves": float(len(outputs[0]))}
    if metric is not None:
        metrics[f"validate.{artifact.task_metric}"] = metric
    return artifact.evolve(baseline=baseline).with_metrics(metrics)


def _task_metric(artifact: Artifact, task_outputs: tuple[torch.Tensor, ...]) -> float | None:
    """The metric on every batch; each batch's inputs already passed the metric's check."""
    if artifact.task_metric is None:
        return None
    return fidelity.metric(artifact.task_metric).fn(list(task_outputs), [b.target for b in artifact.batches])


def _tolerance(dtype: torch.dtype, artifact: Artifact) -> float:
    """How far a rerun of the same model may drift: thread counts and kernel choices change
    float sums in the last bits of the output's precision (TF32 for float32 matmuls on CUDA
    unless matmul_precision is highest); a changed weight moves outputs grossly."""
    import torch

    if not dtype.is_floating_point:
        return 0.0
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32 and artifact.device.startswith("cuda") and \
            artifact.settings.get("matmul_precision", "highest") != "highest":
        eps = 2.0 ** -10
    return max(1e-4, 8 * eps)


def _differs(fresh: torch.Tensor, cached: torch.Tensor, rtol: float) -> str | None:
    """Why a rerun's output does not match the cached one (shape, or values beyond rtol, with
    an absolute slack of rtol/10 of the output's largest value); None when it matches."""
    import torch

    fresh = fresh.detach().float().cpu()
    if fresh.shape != cached.shape:
        return f"has shape {tuple(fresh.shape)}; the entry holds {tuple(cached.shape)}"
    scale = float(cached.abs().nan_to_num(0.0, 0.0, 0.0).max()) if cached.numel() else 0.0
    if torch.allclose(fresh, cached, rtol=rtol, atol=rtol / 10 * scale, equal_nan=True):
        return None
    diff = float((fresh - cached).abs().nan_to_num(float("inf")).max())
    return f"differs from the entry by up to {diff:.3g} (tolerance {rtol:.2g} relative)"
