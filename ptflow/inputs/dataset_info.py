"""Describe the data a run used (what the tracker logs as an MLflow dataset)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import DataContext, DatasetInfo, TensorInfo
from ptflow.core.spec import Batch

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


def describe_data(source: Mapping[str, Any], batches: Sequence[Batch], arg_names: Sequence[str],
                  context: DataContext) -> DatasetInfo:
    """Name, source, digest and schema of the rows in `batches` (what the tracker logs as a
    data set). The digest covers the bytes of every input and target, column by column, so
    it does not depend on the batch size."""
    import torch

    named = [batch.inputs.named(arg_names) for batch in batches]
    inputs = tuple(TensorInfo(name, _dtype(t.dtype), (-1, *t.shape[1:])) for name, t in named[0])
    labels = [torch.as_tensor(b.target) for b in batches] if batches[0].target is not None else []
    targets = TensorInfo("targets", _dtype(labels[0].dtype), (-1, *labels[0].shape[1:])) if labels else None
    digest = hashlib.sha256(json.dumps([asdict(c) for c in (*inputs, targets) if c]).encode())
    for column in range(len(inputs)):
        for leaves in named:
            digest.update(raw_bytes(leaves[column][1]))
    for label in labels:
        digest.update(raw_bytes(label))
    target = str(source.get("_target_", "data"))
    arguments = ", ".join(f"{key}={value!r}" for key, value in source.items() if key != "_target_")
    return DatasetInfo(name=target.rsplit(".", 1)[-1], context=context, source=f"{target}({arguments})",
                       digest=digest.hexdigest(), inputs=inputs, targets=targets,
                       rows=sum(b.inputs.batch_size() for b in batches))


def raw_bytes(tensor: torch.Tensor) -> Any:
    """The tensor's elements as a flat uint8 array (any dtype, bfloat16 included)."""
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
