"""What goes into and comes out of a model, whatever its calling convention.

Inputs may be one tensor, several positional tensors, or named tensors (a dict, as
Hugging Face models take). Outputs may be a tensor, a tuple, a dict or a dataclass
(e.g. a ``ModelOutput``); they are flattened to named leaves for comparison.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BATCH_DIM = "batch"


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (a str entry is a dynamic dim's label) and dtype of one input tensor."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def dynamic_dims(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class InputSpec:
    """The model's inputs: positional (in order) or keyword tensors."""

    tensors: tuple[TensorSpec, ...]
    keyword: bool = False
    ranges: tuple[tuple[str, int | None, int | None], ...] = ()   # (label, min, max) of bounded dims

    def bounds(self, label: str) -> tuple[int | None, int | None]:
        return next(((low, high) for name, low, high in self.ranges if name == label), (None, None))

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                 "passed_as": "keyword" if self.keyword else "positional"} for t in self.tensors]

    def __str__(self) -> str:
        parts = [f"{t.name}[{', '.join(map(str, t.shape))}]:{t.dtype}" for t in self.tensors]
        return ", ".join(parts)


@dataclass(frozen=True)
class ModelInputs:
    """One call's inputs: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: object) -> "ModelInputs":
        """A tensor -> one positional arg; a tuple/list -> positional; a mapping -> keywords."""
        if isinstance(value, ModelInputs):
            return value
        if isinstance(value, Mapping):
            return cls(kwargs=dict(value))
        if isinstance(value, (tuple, list)):
            return cls(args=tuple(value))
        return cls(args=(value,))

    def named(self, arg_names: Sequence[str] = ()) -> list[tuple[str, "torch.Tensor"]]:
        names = list(arg_names) + [f"arg{i}" for i in range(len(arg_names), len(self.args))]
        return list(zip(names, self.args)) + list(self.kwargs.items())

    def map(self, fn) -> "ModelInputs":
        return ModelInputs(tuple(fn(a) for a in self.args), {k: fn(v) for k, v in self.kwargs.items()})

    def batch_size(self) -> int:
        first = next(iter(self.args), None)
        if first is None:
            first = next(iter(self.kwargs.values()))
        return int(first.shape[0])

    def spec(self, arg_names: Sequence[str] = (), dynamic_batch: bool = True,
             dynamic_dims: Mapping[str, Mapping[int, str]] | None = None) -> InputSpec:
        """The inputs' spec; dim 0 labelled `batch` when `dynamic_batch`, and each
        `dynamic_dims[name][dim]` labelled as given (inputs sharing a label share the dim)."""
        extra = dict(dynamic_dims or {})
        tensors, ranges = [], []
        for name, tensor in self.named(arg_names):
            shape: list[int | str] = list(tensor.shape)
            if dynamic_batch and shape:
                shape[0] = BATCH_DIM
            for dim, label in extra.pop(name, {}).items():
                if not 0 <= int(dim) < len(shape) or (dynamic_batch and int(dim) == 0):
                    raise ValueError(f"data.dynamic_dims.{name}: dim {dim} is not a non-batch dim of its "
                                     f"shape {tuple(tensor.shape)}")
                if isinstance(label, Mapping):   # {label: seq, min: 1, max: 512}
                    unknown = set(label) - {"label", "min", "max"}
                    if "label" not in label or unknown:
                        raise ValueError(f"data.dynamic_dims.{name}.{dim}: a label, or {{label: seq, min: 1, "
                                         f"max: 512}}; found {dict(label)}")
                    ranges.append((str(label["label"]), label.get("min"), label.get("max")))
                    label = label["label"]
                shape[int(dim)] = str(label)
            tensors.append(TensorSpec(name, tuple(shape), str(tensor.dtype).removeprefix("torch.")))
        if extra:
            names = [n for n, _ in self.named(arg_names)]
            raise ValueError(f"data.dynamic_dims names {sorted(extra)}, which are not model inputs; the inputs "
                             f"are {names}")
        return InputSpec(tuple(tensors), keyword=bool(self.kwargs) and not self.args, ranges=tuple(ranges))


def export_dynamic_shapes(spec: InputSpec, example: ModelInputs) -> Any:
    """torch.export's `dynamic_shapes` for the spec's dynamic dims (one Dim per label),
    keyed like the example's call: a tuple for positional inputs, a dict for keywords."""
    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for tensor in spec.tensors:
        dynamic = tensor.dynamic_dims()
        shapes[tensor.name] = {i: dims.setdefault(label, _dim(label, spec)) for i, label in dynamic.items()} \
            if dynamic else None
    if not any(shapes.values()):
        return None
    if example.args and not example.kwargs:
        return tuple(shapes.values())
    return shapes


def _dim(label: str, spec: InputSpec) -> Any:
    import torch

    low, high = spec.bounds(label)
    bounds = {k: int(v) for k, v in (("min", low), ("max", high)) if v is not None}
    return torch.export.Dim(label, **bounds)


def export_example(spec: InputSpec, example: ModelInputs) -> tuple[ModelInputs, Any]:
    """(inputs to trace with, their `dynamic_shapes`) for torch.export. torch.export
    specialises a dim of size 1, so a size-1 example of a dynamic batch is doubled."""
    import torch

    shapes = export_dynamic_shapes(spec, example)
    if shapes is not None and example.batch_size() == 1:
        example = example.map(lambda t: torch.cat([t, t]))
    return example, shapes


@dataclass(frozen=True)
class Batch:
    """Model inputs plus the task's targets (None for unlabelled data)."""

    inputs: ModelInputs
    target: Any = None


def call(model: Any, inputs: ModelInputs) -> Any:
    return model(*inputs.args, **inputs.kwargs)


def flatten_outputs(value: object, path: str = "output") -> list[tuple[str, "torch.Tensor"]]:
    """Every tensor leaf of a model's output, with a readable path (``output.logits``)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if value is None:
        return []
    if isinstance(value, Mapping):
        items = list(value.items())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    else:
        return []
    leaves: list[tuple[str, torch.Tensor]] = []
    for key, item in items:
        leaves.extend(flatten_outputs(item, f"{path}.{key}"))
    return leaves


def select_output(value: object, key: str | int | None) -> "torch.Tensor":
    """The task output: the first tensor leaf, or the leaf named by a key/index."""
    leaves = flatten_outputs(value)
    if not leaves:
        raise ValueError(f"the model returned no tensors (got {type(value).__name__})")
    if key is None:
        return leaves[0][1]
    wanted = f"output.{key}"
    for path, tensor in leaves:
        if path == wanted:
            return tensor
    raise KeyError(f"output {key!r} not found; the model's outputs are: "
                   + ", ".join(p.removeprefix("output.") for p, _ in leaves))
