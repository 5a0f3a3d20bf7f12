"""Calibration (and QAT training) data: `data.calibration` loaded on demand, cut into
batches, and proven disjoint from the eval rows."""
from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ptflow.core.artifact import Artifact, DataContext, DatasetInfo
from ptflow.core.errors import InputError
from ptflow.core.spec import Batch
from ptflow.core.targets import instantiate
from ptflow.inputs.data import as_split, make_batches
from ptflow.inputs.dataset_info import describe_data, raw_bytes


@dataclass
class CalibrationData:
    batches: tuple[Batch, ...]
    info: DatasetInfo
    source: Mapping[str, Any]
    seconds: float = 0.0       # time spent running the batches (calibration or training)

    @property
    def examples(self) -> int:
        return sum(b.inputs.batch_size() for b in self.batches)

    def describe(self) -> dict[str, Any]:
        """The lineage entry: what calibrated the model."""
        return {"source": self.info.source, "digest": self.info.digest, "batches": len(self.batches),
                "examples": self.examples}


def load_calibration(artifact: Artifact, batches: int, batch_size: int | None, device: str) -> CalibrationData:
    """The first `batches` batches of data.calibration, on `device`; InputError if any of
    their rows is also an eval row (calibrating on the eval data would flatter the result)."""
    node = artifact.calibration
    if not node:
        raise InputError("data.calibration is not set: this recipe needs calibration data; point it at "
                         "a `_target_` giving a split other than the eval data (e.g. the train split)")
    split = as_split(instantiate(node))
    size = batch_size or artifact.example.inputs.batch_size()
    cut = make_batches(split, size, batches)
    moved = tuple(Batch(b.inputs.map(lambda t: t.to(device)), b.target) for b in cut)
    shared = len(row_hashes(moved) & row_hashes(artifact.batches))
    if shared:
        raise InputError(f"data.calibration shares {shared} row(s) with the eval data (data.source): "
                         "calibrating or fine-tuning on eval rows makes the accuracy delta look better "
                         "than it is. Point data.calibration at a disjoint split (e.g. split: train)")
    arg_names = [p for p in inspect.signature(artifact.module.forward).parameters if p != "self"] \
        if hasattr(artifact.module, "forward") else []
    info = describe_data(node, moved, arg_names, DataContext.CALIBRATION)
    return CalibrationData(moved, info, node)


def row_hashes(batches: Iterable[Batch]) -> set[bytes]:
    """One digest per example over all its input tensors (targets ignored)."""
    found: set[bytes] = set()
    for batch in batches:
        tensors = [t.detach().cpu() for _, t in batch.inputs.named()]
        for row in range(batch.inputs.batch_size()):
            digest = hashlib.blake2b(digest_size=16)
            for tensor in tensors:
                digest.update(raw_bytes(tensor[row]))
            found.add(digest.digest())
    return found


def cycle(batches: Sequence[Batch], steps: int) -> Iterable[Batch]:
    """`steps` batches, going round `batches` as often as needed (QAT)."""
    for step in range(steps):
        yield batches[step % len(batches)]
