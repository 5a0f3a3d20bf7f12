"""A test plugin task metric, the worked example of docs/extending/index.md ("A task metric"):
registered when `plugins` lists this module, selected with data.metric=within_half."""
from __future__ import annotations

import torch

from ptflow.decide.fidelity import register_metric


def _one_value_per_example(output, target):
    """Problems with one eval batch, each saying what was found and what was expected; [] when fine."""
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        return [f"targets are {getattr(target, 'dtype', type(target).__name__)}; expected float values"]
    if output.numel() != output.shape[0] or target.numel() != output.shape[0]:
        return [f"the task output has shape {tuple(output.shape)} and the targets {tuple(target.shape)}; "
                "expected one value per example in each"]
    return []


@register_metric("within_half", check=_one_value_per_example, higher_is_better=True)
def within_half(outputs, targets):
    """Share of examples predicted within 0.5 of their target."""
    hits = total = 0
    for output, target in zip(outputs, targets):   # one pair per eval batch; outputs are CPU float
        hits += int(((output.reshape(-1) - target.reshape(-1).float()).abs() <= 0.5).sum())
        total += target.numel()
    return hits / total if total else float("nan")
