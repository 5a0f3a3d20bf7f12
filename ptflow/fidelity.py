"""Did the optimized model get worse? Task metrics and output agreement vs the baseline."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ptflow.errors import invalid_choice


@dataclass(frozen=True)
class TaskMetric:
    name: str
    fn: Callable[[Sequence[Any], Sequence[Any]], float]
    higher_is_better: bool = True


_METRICS: dict[str, TaskMetric] = {}


def register_metric(name: str, higher_is_better: bool = True):
    """Decorator: fn(task_outputs per batch, targets per batch) -> float."""

    def decorate(fn):
        _METRICS[name] = TaskMetric(name, fn, higher_is_better)
        return fn

    return decorate


def metric(name: str) -> TaskMetric:
    if name not in _METRICS:
        raise invalid_choice("metric", name, sorted(_METRICS))
    return _METRICS[name]


def metric_names() -> list[str]:
    return sorted(_METRICS)


@register_metric("top1_accuracy")
def top1_accuracy(outputs: Sequence[Any], targets: Sequence[Any]) -> float:
    """Share of rows whose arg-max class equals the integer target."""
    correct = total = 0
    for out, target in zip(outputs, targets):
        predicted = out.float().argmax(dim=-1).cpu()
        correct += int((predicted == target.cpu()).sum())
        total += int(target.numel())
    return correct / total if total else float("nan")


def agreement(baseline: Sequence[Sequence[tuple[str, Any]]], candidate: Sequence[Sequence[tuple[str, Any]]],
              baseline_task: Sequence[Any], candidate_task: Sequence[Any]) -> dict[str, float]:
    """Max/mean abs error over every output leaf, and top-1 agreement of the task output."""
    import torch

    max_abs, abs_sum, count = 0.0, 0.0, 0
    for base_leaves, cand_leaves in zip(baseline, candidate):
        if [p for p, _ in base_leaves] != [p for p, _ in cand_leaves]:
            raise ValueError("the optimized model's outputs differ in structure from the baseline's: "
                             f"{[p for p, _ in cand_leaves]} vs {[p for p, _ in base_leaves]}")
        for (path, base), (_, cand) in zip(base_leaves, cand_leaves):
            if base.shape != cand.shape:
                raise ValueError(f"{path}: shape {tuple(cand.shape)} differs from the baseline's {tuple(base.shape)}")
            diff = (cand.detach().float().cpu() - base.float()).abs()
            max_abs = max(max_abs, float(diff.max())) if diff.numel() else max_abs
            abs_sum += float(diff.sum())
            count += diff.numel()
    result = {"max_abs_error": max_abs, "mean_abs_error": abs_sum / count if count else 0.0}
    if baseline_task and baseline_task[0].dim() >= 1 and baseline_task[0].shape[-1] > 1:
        same = total = 0
        for base, cand in zip(baseline_task, candidate_task):
            same += int((base.argmax(-1) == cand.detach().float().cpu().argmax(-1)).sum())
            total += base.argmax(-1).numel()
        result["top1_agreement"] = same / total if total else float("nan")
    return result


def detach_leaves(leaves: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """CPU float copies of output leaves, safe to keep as the reference."""
    return tuple((path, t.detach().float().cpu().clone()) for path, t in leaves)


