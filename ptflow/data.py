"""Eval data: a split of inputs and targets, cut into batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptflow.errors import InputError
from ptflow.spec import Batch, ModelInputs


@dataclass(frozen=True)
class Split:
    """Inputs (a tensor, a tuple of tensors, or a dict of named tensors; dim 0 = examples)
    and the task's targets (or None)."""

    inputs: Any
    targets: Any = None


def as_split(value: object) -> Split:
    """Accept a Split or an ``(inputs, targets)`` pair from a data builder."""
    if isinstance(value, Split):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return Split(*value)
    raise InputError(f"the data builder returned {type(value).__name__}; "
                     "expected ptflow.data.Split or an (inputs, targets) pair")


def make_batches(split: Split, batch_size: int, max_batches: int | None = None) -> tuple[Batch, ...]:
    inputs = ModelInputs.of(split.inputs)
    named = inputs.named()
    if not named:
        raise InputError("the data builder returned no input tensors")
    sizes = {name: int(t.shape[0]) for name, t in named}
    if split.targets is not None:
        sizes["targets"] = int(split.targets.shape[0])
    if len(set(sizes.values())) != 1:
        raise InputError(f"inputs and targets disagree on the number of examples: {sizes}")
    count = next(iter(sizes.values()))
    if count == 0:
        raise InputError("the data split is empty")
    batches = []
    for start in range(0, count, batch_size):
        if max_batches is not None and len(batches) >= max_batches:
            break
        window = slice(start, start + batch_size)
        target = split.targets[window] if split.targets is not None else None
        batches.append(Batch(inputs.map(lambda t: t[window]), target))
    return tuple(batches)
