"""Eval data: a split of inputs and targets, cut into batches.

A data builder returns a ``Split``, an ``(inputs, targets)`` pair, a map-style
``torch.utils.data.Dataset`` (its items stacked) or a ``DataLoader`` (its batches joined).
An item or batch is ``(inputs, target)``, ``(inputs,)``, inputs alone, or a dict whose
``labels``/``label``/``targets``/``target`` entry is the target and whose other entries are
keyword inputs.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ptflow.core.errors import InputError
from ptflow.core.spec import Batch, ModelInputs

TARGET_KEYS = ("labels", "label", "targets", "target")   # in a dict item: the target, not an input


@dataclass(frozen=True)
class Split:
    """Inputs (a tensor, a tuple of tensors, or a dict of named tensors; dim 0 = examples)
    and the task's targets (or None)."""

    inputs: Any
    targets: Any = None


def as_split(value: object, limit: int | None = None, key: str = "the data builder") -> Split:
    """A data builder's result as a Split: a Split, an ``(inputs, targets)`` pair, a Dataset
    or a DataLoader (read up to `limit` examples; `key` names the builder in errors)."""
    if isinstance(value, Split):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return Split(*value)
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(value, DataLoader):
        return _join(_parts(value, "batch", key), "batch", key, limit)
    map_style = (hasattr(value, "__getitem__") and hasattr(value, "__len__") and not hasattr(value, "shape")
                 and not isinstance(value, (str, bytes, Mapping, list, tuple)))   # a tensor or array is no Dataset
    if isinstance(value, IterableDataset) or map_style:
        items = value if isinstance(value, IterableDataset) else (value[i] for i in range(len(value)))
        return _join(_parts(items, "item", key), "item", key, limit)
    raise InputError(f"{key} returned a {type(value).__name__}; expected ptflow.inputs.data.Split, an (inputs, "
                     "targets) pair, a map-style torch Dataset or a DataLoader")


def _parts(entries: Iterable[Any], kind: str, key: str) -> Iterable[tuple[Any, Any]]:
    """(inputs, target) of each Dataset item or DataLoader batch."""
    for index, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            target_key = next((k for k in TARGET_KEYS if k in entry), None)
            yield {k: v for k, v in entry.items() if k != target_key}, entry.get(target_key)
        elif isinstance(entry, (tuple, list)) and len(entry) in (1, 2):
            yield entry[0], entry[1] if len(entry) == 2 else None
        elif isinstance(entry, (tuple, list)):
            raise InputError(f"{key}: {kind} {index} has {len(entry)} parts; expected (inputs, target), "
                             "(inputs,) or a dict — group several inputs as ((x1, x2), target) or a dict")
        else:
            yield entry, None


def _join(parts: Iterable[tuple[Any, Any]], kind: str, key: str, limit: int | None) -> Split:
    """Stack items (or concatenate batches) into one tensor per input leaf and one for the targets."""
    import torch

    inputs, targets, rows = [], [], 0
    for entry_inputs, target in parts:
        inputs.append(entry_inputs)
        targets.append(target)
        rows += 1 if kind == "item" else _rows(entry_inputs)
        if limit is not None and rows >= limit:
            break
    if not inputs:
        raise InputError(f"{key}: the {'Dataset' if kind == 'item' else 'DataLoader'} yielded nothing")
    combine = torch.stack if kind == "item" else torch.cat
    labelled = [t is not None for t in targets]
    if any(labelled) and not all(labelled):
        raise InputError(f"{key}: {kind} {labelled.index(not labelled[0])} has "
                         f"{'no ' if labelled[0] else 'a '}target but {kind} 0 "
                         f"{'has one' if labelled[0] else 'has none'}")
    split = Split(_collate(inputs, combine, key, kind, "input"),
                  _collate(targets, combine, key, kind, "target") if labelled[0] else None)
    return split if limit is None else Split(_head(split.inputs, limit), _head(split.targets, limit))


def _rows(value: Any) -> int:
    while isinstance(value, (Mapping, tuple, list)) and value:
        value = next(iter(value.values())) if isinstance(value, Mapping) else value[0]
    return int(value.shape[0]) if hasattr(value, "shape") and len(value.shape) else 1


def _head(value: Any, count: int) -> Any:
    if isinstance(value, Mapping):
        return {k: v[:count] for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(v[:count] for v in value)
    return None if value is None else value[:count]


def _collate(values: list[Any], combine: Callable, key: str, kind: str, what: str) -> Any:
    """One tensor per leaf of `values` (same-structured items or batches), naming the entry
    and the leaf that cannot be combined."""
    import torch

    first = values[0]
    if isinstance(first, Mapping):
        for index, value in enumerate(values):
            if not isinstance(value, Mapping) or set(value) != set(first):
                found = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                raise InputError(f"{key}: {kind} {index}'s {what} is {found}; {kind} 0's is {sorted(first)}")
        return {k: _collate([v[k] for v in values], combine, key, kind, f"{what} '{k}'") for k in first}
    if isinstance(first, tuple) or (isinstance(first, list) and first
                                    and all(isinstance(x, (torch.Tensor, Mapping, tuple)) for x in first)):
        return tuple(_collate([v[i] for v in values], combine, key, kind, f"{what}[{i}]")
                     for i in range(len(first)))
    tensors = []
    for index, value in enumerate(values):
        try:
            tensors.append(value if isinstance(value, torch.Tensor) else torch.as_tensor(value))
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{key}: {kind} {index}: the {what} is a {type(value).__name__} "
                             f"({str(value)[:40]!r}); expected a tensor, a number, a numpy array or a list "
                             "of numbers — convert it in the dataset (labels to class ids, text to token "
                             "ids)") from None
    shapes = [tuple(t.shape[1:] if combine is torch.cat else t.shape) for t in tensors]
    for index, shape in enumerate(shapes):
        if shape != shapes[0]:
            raise InputError(f"{key}: {kind} {index}: the {what} has shape {shape} but {kind} 0's has "
                             f"{shapes[0]} (per example); ptflow joins them into one tensor, so every example "
                             "needs the same shape: pad or crop in the dataset, or return a DataLoader whose "
                             "collate_fn pads")
    if combine is torch.cat and any(t.dim() == 0 for t in tensors):
        raise InputError(f"{key}: the {what} of a {kind} is a 0-dim tensor; expected the batch dim first")
    return combine(tensors)



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


def forward_names(module: Any) -> list[str]:
    """The names of forward()'s arguments, in order (a TorchScript module: from its schema)."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):   # a ScriptMethod has a schema, not a Python signature
        schema = getattr(module.forward, "schema", None)
        return [a.name for a in schema.arguments[1:]] if schema is not None else []
    return [p.name for p in parameters if p.name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def check_keywords(module: Any, arg_names: Sequence[str], inputs: ModelInputs) -> None:
    """Keyword inputs must be named as forward()'s arguments (unless it takes **kwargs)."""
    try:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                        for p in inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):   # TorchScript: its schema names every argument
        takes_any = False
    unknown = [name for name in inputs.kwargs if name not in arg_names]
    if unknown and not takes_any:
        model = getattr(module, "original_name", type(module).__name__)   # TorchScript keeps the class name there
        raise InputError(f"data.source gives keyword input(s) {', '.join(unknown)}, which {model}.forward() "
                         f"does not take; it takes ({', '.join(arg_names)}). Name the data's inputs after "
                         "forward()'s arguments, or give them as a list (positional inputs)")


def fit_to_program(batches: tuple[Batch, ...], arg_names: Sequence[str], positional: int,
                   keywords: Sequence[str], program: str) -> tuple[Batch, ...]:
    """Batches whose inputs are passed as a program was exported to take them: its first
    `positional` forward() arguments by position, then `keywords` by name (matched by name)."""
    by_position, by_name = list(arg_names[:positional]), list(keywords)
    first = batches[0].inputs
    if len(first.args) == len(by_position) and set(first.kwargs) == set(by_name):
        return batches
    named = dict(first.named(arg_names))
    if set(named) != {*by_position, *by_name}:
        takes = ", ".join([*by_position, *(f"{k}=" for k in by_name)])
        raise InputError(f"model.weights: {program} takes ({takes}); data.source gives {', '.join(named)}. "
                         "Name the data's inputs as the program's (a mapping for keyword inputs, a list in "
                         "forward() order for positional ones)")

    def refit(inputs: ModelInputs) -> ModelInputs:
        values = dict(inputs.named(arg_names))
        return ModelInputs(tuple(values[n] for n in by_position), {k: values[k] for k in by_name})

    return tuple(Batch(refit(b.inputs), b.target) for b in batches)
