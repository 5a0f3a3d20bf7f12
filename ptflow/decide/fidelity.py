"""Did the optimized model get worse? Task metrics and output agreement vs the baseline.

A task metric is registered with the check of its inputs: validate runs the check on
every eval batch before the metric is computed, so data the metric cannot score (float
targets for top-1, labels past the class count, class ids for a regression error) stops
the run with a message instead of a confident number.

Built in: ``top1_accuracy`` (higher is better) for integer class ids; ``mse`` and ``mae``
(lower is better) and ``cosine_similarity`` (higher is better) for float targets shaped
like the task output. ``register_metric`` adds one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ptflow.core.errors import InputError, invalid_choice

# check(task output, targets) of one eval batch -> what is wrong with them ([] when fine)
InputCheck = Callable[[Any, Any], list[str]]


@dataclass(frozen=True)
class TaskMetric:
    """A registered task metric: its name (the value of ``data.metric``), the function that
    computes it over every eval batch, the check of one batch's inputs, and its direction."""

    name: str
    fn: Callable[[Sequence[Any], Sequence[Any]], float]
    check: InputCheck
    higher_is_better: bool = True


_METRICS: dict[str, TaskMetric] = {}


def register_metric(name: str, *, check: InputCheck, higher_is_better: bool = True):
    """Register a task metric: a decorator on ``fn(task outputs, targets) -> float``.

    ``fn`` gets one task output and one targets object per eval batch (the outputs as CPU
    float tensors) and returns one number for the whole eval set; ``data.metric=<name>``
    selects it. ``check(output, target)`` runs on every eval batch before the baseline is
    measured and states what the metric can score: it returns problems as phrases naming what
    was found and what was expected (e.g. "targets are float32; expected integer class ids"),
    or ``[]``; any problem stops the run with an error naming ``data.metric``.
    ``higher_is_better`` is the metric's direction, which the accuracy gate reads
    (``accuracy.higher_is_better`` overrides it): a lower-is-better metric is gated relative
    to the baseline's value unless ``accuracy.mode`` says otherwise.

    Args:
        name: the value of ``data.metric`` that selects the metric.
        check: what is wrong with one eval batch's task output and targets (``[]``: nothing).
        higher_is_better: True when a larger value is better (accuracy), False for an error.

    Example:
        ```python
        from ptflow.decide.fidelity import register_metric

        def _same_shape(output, target):
            return [] if output.shape == target.shape else [
                f"targets have shape {tuple(target.shape)}; expected {tuple(output.shape)}"]

        @register_metric("max_error", check=_same_shape, higher_is_better=False)
        def max_error(outputs, targets):
            return max(float((o - t.float()).abs().max()) for o, t in zip(outputs, targets))
        ```
    """

    def decorate(fn):
        _METRICS[name] = TaskMetric(name, fn, check, higher_is_better)
        return fn

    return decorate


def metric(name: str) -> TaskMetric:
    """The registered metric `name`; a ConfigError listing the registered names if there is none."""
    if name not in _METRICS:
        raise invalid_choice("metric", name, sorted(_METRICS))
    return _METRICS[name]


def metric_names() -> list[str]:
    return sorted(_METRICS)


def check_metric_inputs(name: str, output: Any, target: Any, batch_index: int) -> None:
    """Raise InputError naming `data.metric` when metric `name` cannot score this batch."""
    if target is None:
        raise InputError(f"data.metric={name!r} needs targets, but the data source returned none; "
                         "set data.metric=null for unlabelled data")
    problems = metric(name).check(output, target)
    if problems:
        raise InputError(
            f"data.metric={name!r} cannot score eval batch {batch_index}: {'; '.join(problems)}. "
            "Fix the data builder (or model.output_key) so the metric gets what it expects, or pick "
            "the metric that fits the targets: data.metric=top1_accuracy for integer class ids, "
            "data.metric=mse (or mae, cosine_similarity) for float values shaped like the task output, "
            "data.metric=null for unlabelled data")


def class_scores_problem(output: Any) -> str | None:
    """Why `output` is not per-example class scores shaped (batch, classes >= 2), or None."""
    shape = tuple(output.shape)
    if len(shape) != 2 or shape[1] < 2:
        return (f"the task output has shape {shape}; expected per-example class scores "
                "shaped (batch, classes) with classes >= 2")
    return None


def _check_class_ids(output: Any, target: Any) -> list[str]:
    """Targets must be integer class ids, one per example, each within the output's classes."""
    import torch

    scores_problem = class_scores_problem(output)
    if scores_problem:
        return [scores_problem]
    batch, classes = output.shape
    if not isinstance(target, torch.Tensor):
        return [f"targets are a {type(target).__name__}; expected a tensor of integer class ids"]
    problems = []
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        problems.append(f"targets are {str(target.dtype).removeprefix('torch.')}; expected integer "
                        "class ids (int64), e.g. targets.long() for whole-number labels")
    if tuple(target.shape) != (batch,):
        problems.append(f"targets have shape {tuple(target.shape)}; expected one class id per "
                        f"example, shape ({batch},)")
    if not problems and target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= classes:
            problems.append(f"labels span {low}..{high} but the task output has {classes} classes; "
                            f"expected class ids in 0..{classes - 1}")
    return problems


@register_metric("top1_accuracy", check=_check_class_ids)
def top1_accuracy(outputs: Sequence[Any], targets: Sequence[Any]) -> float:
    """Share of rows whose arg-max class equals the integer target."""
    correct = total = 0
    for out, target in zip(outputs, targets):
        predicted = out.float().argmax(dim=-1).cpu()
        correct += int((predicted == target.cpu()).sum())
        total += int(target.numel())
    return correct / total if total else float("nan")


def _check_float_targets(output: Any, target: Any) -> list[str]:
    """Targets must be finite floats shaped like the task output; a trailing dimension of
    size 1 on either side is ignored, so a (batch, 1) output scores (batch,) targets."""
    import torch

    shape = tuple(output.shape)
    if not shape:
        return [f"the task output has shape {shape}; expected one row per example, shaped (batch, ...)"]
    if not isinstance(target, torch.Tensor):
        return [f"targets are a {type(target).__name__}; expected a float tensor shaped like the task "
                f"output, {shape}"]
    problems = []
    if not output.is_floating_point():
        problems.append(f"the task output is {_dtype(output)}; expected float predictions")
    if not target.is_floating_point():
        problems.append(f"targets are {_dtype(target)}; expected float values (integer class ids are scored "
                        "by data.metric=top1_accuracy; targets.float() if the integers are values)")
    if _without_unit_tail(tuple(target.shape)) != _without_unit_tail(shape):
        problems.append(f"targets have shape {tuple(target.shape)}; expected the task output's shape {shape} "
                        "(a trailing dimension of size 1 may be left out)")
    if target.is_floating_point():
        bad = int((~torch.isfinite(target)).sum())
        if bad:
            problems.append(f"targets hold {bad} non-finite value(s) (NaN or inf); expected finite numbers: "
                            "drop or fill those rows in the data builder")
    return problems


def _check_float_rows(output: Any, target: Any) -> list[str]:
    """_check_float_targets, and at least two values per example: the cosine of one value
    and another is only whether their signs agree."""
    problems = _check_float_targets(output, target)
    shape = tuple(output.shape)
    if shape and math.prod(shape[1:]) < 2:
        problems.append(f"the task output has shape {shape}: one value per example, whose cosine with its "
                        "target is only the agreement of their signs; expected (batch, features >= 2), "
                        "or data.metric=mse or mae for one value per example")
    return problems


def _without_unit_tail(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-1] if len(shape) >= 2 and shape[-1] == 1 else shape


def _dtype(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _float64_pairs(outputs: Sequence[Any], targets: Sequence[Any]):
    """(output, target) of each batch as CPU float64, the target in the output's shape."""
    for out, target in zip(outputs, targets):
        out = out.detach().cpu().double()
        yield out, target.detach().cpu().double().reshape(out.shape)


def _mean_elementwise(outputs: Sequence[Any], targets: Sequence[Any], error: Callable[[Any], Any]) -> float:
    total, count = 0.0, 0
    for out, target in _float64_pairs(outputs, targets):
        total += float(error(out - target).sum())
        count += out.numel()
    return total / count if count else float("nan")


@register_metric("mse", check=_check_float_targets, higher_is_better=False)
def mse(outputs: Sequence[Any], targets: Sequence[Any]) -> float:
    """Mean squared error: the sum of (output - target)² over every element of every eval
    batch, divided by the number of elements (float64 sums, so each batch weighs by its size)."""
    return _mean_elementwise(outputs, targets, lambda diff: diff.square())


@register_metric("mae", check=_check_float_targets, higher_is_better=False)
def mae(outputs: Sequence[Any], targets: Sequence[Any]) -> float:
    """Mean absolute error: the sum of |output - target| over every element of every eval
    batch, divided by the number of elements (float64 sums, so each batch weighs by its size)."""
    return _mean_elementwise(outputs, targets, lambda diff: diff.abs())


@register_metric("cosine_similarity", check=_check_float_rows, higher_is_better=True)
def cosine_similarity(outputs: Sequence[Any], targets: Sequence[Any]) -> float:
    """Mean over examples of cos(o, t) = o·t / (|o| |t|), where o is the example's task output
    flattened past the batch dim and t its target row likewise (float64). An example whose
    output and target are both all zero counts 1.0; one where only one of them is, 0.0. In -1..1."""
    import torch

    total, count = 0.0, 0
    for out, target in _float64_pairs(outputs, targets):
        rows, wanted = out.reshape(out.shape[0], -1), target.reshape(out.shape[0], -1)
        row_norms, wanted_norms = rows.norm(dim=1), wanted.norm(dim=1)
        norms = row_norms * wanted_norms
        both_zero = ((row_norms == 0) & (wanted_norms == 0)).double()
        cosine = torch.where(norms > 0, (rows * wanted).sum(dim=1) / norms.clamp_min(1e-300), both_zero)
        total += float(cosine.clamp(-1.0, 1.0).sum())   # rounding may step past the bounds
        count += cosine.numel()
    return total / count if count else float("nan")


def agreement(baseline: Sequence[Sequence[tuple[str, Any]]], candidate: Sequence[Sequence[tuple[str, Any]]],
              baseline_task: Sequence[Any], candidate_task: Sequence[Any]) -> dict[str, float]:
    """How far the candidate's outputs moved from the baseline's, on every eval batch.

    Over all output leaves: ``max_abs_error``, ``mean_abs_error``; per leaf (``fidelity.<leaf>.*``):
    max/mean/p99 of the absolute and the relative error, and the cosine similarity; and
    ``top1_agreement`` of the task output when it holds class scores (batch, classes >= 2).
    """
    import torch

    per_leaf: dict[str, list[tuple[Any, Any]]] = {}
    for base_leaves, cand_leaves in zip(baseline, candidate):
        if [p for p, _ in base_leaves] != [p for p, _ in cand_leaves]:
            raise ValueError("the optimized model's outputs differ in structure from the baseline's: "
                             f"{[p for p, _ in cand_leaves]} vs {[p for p, _ in base_leaves]}")
        for (path, base), (_, cand) in zip(base_leaves, cand_leaves):
            if base.shape != cand.shape:
                raise ValueError(f"{path}: shape {tuple(cand.shape)} differs from the baseline's {tuple(base.shape)}")
            per_leaf.setdefault(path, []).append((base.float().reshape(-1), cand.detach().float().cpu().reshape(-1)))
    result: dict[str, float] = {}
    max_abs, abs_sum, count = 0.0, 0.0, 0
    for path, pairs in per_leaf.items():
        base = torch.cat([b for b, _ in pairs])
        cand = torch.cat([c for _, c in pairs])
        stats = leaf_errors(base, cand)
        result.update({f"fidelity.{path}.{name}": value for name, value in stats.items()})
        diff = (cand - base).abs()
        if diff.numel():
            max_abs = max(max_abs, float(diff.max()))
        abs_sum += float(diff.double().sum())
        count += diff.numel()
    result.update({"max_abs_error": max_abs, "mean_abs_error": abs_sum / count if count else 0.0})
    if baseline_task and all(class_scores_problem(t) is None for t in baseline_task):
        same = total = 0
        for base, cand in zip(baseline_task, candidate_task):
            same += int((base.argmax(-1) == cand.detach().float().cpu().argmax(-1)).sum())
            total += base.shape[0]
        result["top1_agreement"] = same / total if total else float("nan")
    return result


REL_FLOOR = 1e-3   # relative errors divide by max(|baseline|, REL_FLOOR * max |baseline| of the leaf)


def leaf_errors(base: Any, cand: Any) -> dict[str, float]:
    """Error statistics of one output leaf (flat float tensors of equal length).

    The relative error of an element is |candidate - baseline| / max(|baseline|, floor),
    with floor = REL_FLOOR x the leaf's largest |baseline|, so entries near zero do not
    turn a tiny absolute error into an enormous relative one."""
    import torch

    if base.numel() == 0:
        return {}
    diff = (cand - base).abs()
    floor = max(float(base.abs().max()) * REL_FLOOR, torch.finfo(torch.float32).tiny)
    rel = diff / base.abs().clamp_min(floor)
    norms = float(base.double().norm()) * float(cand.double().norm())
    cosine = float((base.double() @ cand.double()) / norms) if norms else (1.0 if float(diff.max()) == 0 else 0.0)
    cosine = min(1.0, max(-1.0, cosine))   # rounding may step past the bounds
    return {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.double().mean()),
            "p99_abs_error": _quantile(diff, 0.99), "max_rel_error": float(rel.max()),
            "mean_rel_error": float(rel.double().mean()), "p99_rel_error": _quantile(rel, 0.99),
            "cosine": cosine}


def _quantile(values: Any, q: float) -> float:
    """The q-quantile (nearest rank), for tensors of any size (torch.quantile stops at 16M)."""
    flat = values.reshape(-1)
    rank = max(1, min(flat.numel(), math.ceil(q * flat.numel())))
    return float(flat.kthvalue(rank).values)


def detach_leaves(leaves: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """CPU float copies of output leaves, safe to keep as the reference."""
    return tuple((path, t.detach().float().cpu().clone()) for path, t in leaves)
