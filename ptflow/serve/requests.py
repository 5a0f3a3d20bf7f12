"""A protocol request, checked against the served model's description before it is queued.

Every refusal is a ``BadRequest`` whose message names the input and what was expected
(the server answers HTTP 400 / gRPC INVALID_ARGUMENT and keeps serving): an unknown,
missing or repeated input name; a datatype other than the model's; a wrong rank or a
fixed dim of the wrong size (with the expected shape, ``-1`` where any size goes); values
that do not fill the shape; inputs that disagree on the batch; a batch over
``--max-batch-size``; NaN or Inf in a float input (unless ``--allow-nonfinite``); an unknown
requested output; a malformed ``timeout`` parameter.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptflow.serve.loaded import TensorSpec


class BadRequest(ValueError):
    """The request does not fit the model; the message says how."""


@dataclass
class Checked:
    arrays: list[np.ndarray]       # in the model's input order
    rows: int                      # the batch (1 when the model has no dynamic batch dim)
    timeout_s: float | None        # the request's own ``timeout`` parameter (microseconds, as Triton's)
    outputs: list[str] | None      # requested output names, None for all


def describe(spec: TensorSpec) -> str:
    return f"{spec.name} ({spec.datatype} {list(spec.shape)})"


def check(inputs: Sequence[Any], parameters: Any, requested: Sequence[Any] | None, specs: Sequence[TensorSpec],
          outputs: Sequence[TensorSpec], batch_dynamic: bool, max_batch: int, allow_nonfinite: bool,
          labels: Mapping[str, Sequence[Any]] | None = None) -> Checked:
    """`inputs` are KServe ``InferInput``s (name, datatype, shape, as_numpy()); `labels` the
    manifest's input shapes with their dims' names (``['batch', 'tokens', 8]``): inputs that
    share a named dim must agree on its size."""
    by_name = {spec.name: spec for spec in specs}
    given: dict[str, Any] = {}
    for item in inputs:
        name = item.name
        if name not in by_name:
            raise BadRequest(f"unknown input {name!r}: this model takes {', '.join(describe(s) for s in specs)}")
        if name in given:
            raise BadRequest(f"input {name!r} is given twice")
        given[name] = item
    missing = [describe(s) for s in specs if s.name not in given]
    if missing:
        raise BadRequest(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    arrays, batches = [], {}
    for spec in specs:
        array = _array(given[spec.name], spec)
        if batch_dynamic:
            batches[spec.name] = int(array.shape[0])
        if not allow_nonfinite and array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise BadRequest(f"input {spec.name!r} holds {bad} NaN/Inf value{'s' if bad > 1 else ''}; the server "
                             "refuses non-finite inputs (start it with --allow-nonfinite to pass them through)")
        arrays.append(array)
    _same_named_dims(specs, arrays, labels or {})
    rows = 1
    if batch_dynamic:
        if len(set(batches.values())) > 1:
            raise BadRequest("the inputs disagree on the batch (dim 0): "
                             + ", ".join(f"{k} has {v}" for k, v in batches.items()))
        rows = next(iter(batches.values()))
        if rows < 1:
            raise BadRequest(f"input {specs[0].name!r} has an empty batch (dim 0 is 0): send at least one row")
        if rows > max_batch:
            raise BadRequest(f"input {specs[0].name!r} has a batch of {rows}; the limit per request is {max_batch} "
                             "(--max-batch-size): split the request")
    return Checked(arrays, rows, _timeout(parameters), _requested(requested, outputs))


def _same_named_dims(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray],
                     labels: Mapping[str, Sequence[Any]]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for spec, array in zip(specs, arrays):
        for dim, label in enumerate(labels.get(spec.name) or []):
            if not isinstance(label, str) or label == "batch" or dim >= array.ndim:
                continue
            size = int(array.shape[dim])
            first = seen.setdefault(label, (spec.name, size))
            if first[1] != size:
                raise BadRequest(f"inputs {first[0]!r} and {spec.name!r} disagree on dim {label!r}: {first[1]} "
                                 f"and {size}; the model takes one {label} size for both")


def _array(item: Any, spec: TensorSpec) -> np.ndarray:
    if item.datatype != spec.datatype:
        raise BadRequest(f"input {spec.name!r} has datatype {item.datatype}; expected {spec.datatype} "
                         f"(shape {list(spec.shape)})")
    shape = [int(n) for n in item.shape]
    if len(shape) != len(spec.shape):
        raise BadRequest(f"input {spec.name!r} has shape {shape} (rank {len(shape)}); expected rank "
                         f"{len(spec.shape)}: {list(spec.shape)} (-1: any size)")
    for dim, (got, want) in enumerate(zip(shape, spec.shape)):
        if got < 0 or (want != -1 and got != want):
            raise BadRequest(f"input {spec.name!r} has shape {shape}; expected {list(spec.shape)} "
                             f"(dim {dim} must be {'>= 0' if want == -1 else want}; -1: any size)")
    try:
        array = item.as_numpy()
    except Exception as error:  # noqa: BLE001 - a reshape/frombuffer/conversion failure on the client's data
        need = math.prod(shape)
        raise BadRequest(f"input {spec.name!r}: its data do not fill shape {shape} ({need} {spec.datatype} "
                         f"values): {str(error)[:200]}") from None
    if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(spec.dtype):
        raise BadRequest(f"input {spec.name!r}: data decode to {array.dtype} {list(array.shape)}; expected "
                         f"{spec.dtype} {shape}")
    return array


def _timeout(parameters: Any) -> float | None:
    """The request's ``timeout`` parameter (microseconds, Triton's convention) in seconds."""
    if not parameters or "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    value = getattr(value, "int64_param", value) if not isinstance(value, (int, float, str)) else value
    try:
        micros = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"parameter timeout={value!r}: expected an integer number of microseconds") from None
    if micros <= 0:
        raise BadRequest(f"parameter timeout={micros}: expected microseconds > 0")
    return micros / 1e6


def _requested(requested: Sequence[Any] | None, outputs: Sequence[TensorSpec]) -> list[str] | None:
    if not requested:
        return None
    names = [getattr(r, "name", r) for r in requested]
    known = [o.name for o in outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(f"unknown output {unknown[0]!r}: this model returns {', '.join(known)}")
    return names
