"""The typed artifact that stages pass forward; a stage returns ``artifact.evolve(...)``."""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.core.spec import Batch, InputSpec


class Form(str, enum.Enum):
    """What ``Artifact.model`` is. The plan checks that each stage accepts the form it gets."""

    EAGER = "eager"            # a float nn.Module, as loaded
    QUANTIZED = "quantized"    # an nn.Module with quantized weights (torchao tensor subclasses)
    COMPILED = "compiled"      # a torch.compile'd callable
    EXPORTED = "exported"      # a torch.export program, reloaded from its saved file
    SCRIPTED = "scripted"      # a TorchScript module (legacy), e.g. loaded from a jit archive
    PACKED = "packed"          # torch.ao eager quantization (legacy): packed params, no torch.export
    AOTI = "aoti"              # an AOTInductor package, loaded (compiled C++ and kernels)
    ORT = "onnxruntime"        # an ONNX file run by an onnxruntime InferenceSession

    def __str__(self) -> str:
        return self.value


RUNNABLE = frozenset(Form)


class DataContext(str, enum.Enum):
    """What a stage used a data set for (MLflow's dataset context tag)."""

    EVAL = "eval"              # validate and benchmark measure the model on it
    CALIBRATION = "calibration"  # quantize calibrates observers (or fine-tunes, QAT) on it

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TensorInfo:
    """One column of a data set: a tensor's name, dtype and shape, -1 marking the example dim."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """Which data a run used, described by the stage that loaded it (the tracker logs it).

    ``digest`` is the sha256 of the rows used (inputs, then targets), so two runs measured
    on the same data carry the same digest whatever their batch size.
    """

    name: str
    context: DataContext
    source: str                          # the builder's `_target_` and its arguments, as text
    digest: str
    inputs: tuple[TensorInfo, ...]
    targets: TensorInfo | None
    rows: int


@dataclass(frozen=True)
class Baseline:
    """The unoptimized model's reference, captured once by validate.

    ``outputs`` holds, per eval batch, the flattened output leaves (path, CPU tensor).
    ``model`` is the unoptimized runnable, so benchmark can time it the same way.
    """

    model: Any
    outputs: tuple[tuple[tuple[str, Any], ...], ...]
    task_output: tuple[Any, ...]
    metric_name: str | None
    metric: float | None


@dataclass(frozen=True)
class StageRecord:
    """One lineage entry: what ran, with which config, for how long."""

    name: str
    config: Mapping[str, Any]
    duration_s: float
    form_in: Form | None
    form_out: Form
    cache_key: str | None = None


@dataclass(frozen=True)
class Artifact:
    """Everything a stage needs from the stages before it.

    ``model`` is the runnable; ``module`` the nn.Module it was built from (what quantize,
    compile and export transform). ``batches`` are the eval batches, the first being the
    example batch used for tracing and timing.
    """

    model: Any
    form: Form
    module: Any
    inputs: InputSpec
    batches: tuple[Batch, ...]
    device: str
    dtype: str
    output_key: str | None = None          # which output leaf is the task output (None: the first)
    task_metric: str | None = None         # registered metric computed on the targets (None: none)
    settings: Mapping[str, Any] = field(default_factory=dict)
    baseline: Baseline | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    files: Mapping[str, Path] = field(default_factory=dict)
    datasets: tuple[DatasetInfo, ...] = ()    # the data the run used (eval, calibration)
    calibration: Mapping[str, Any] | None = None   # data.calibration: `_target_` node, loaded on demand
    tags: Mapping[str, str] = field(default_factory=dict)     # verdicts for MLflow tags (accepted=true)
    series: Mapping[str, tuple[float, ...]] = field(default_factory=dict)   # per-step metrics (QAT loss)
    rejected: str | None = None            # why the candidate must not go on (accuracy.enforce)
    lineage: tuple[StageRecord, ...] = ()

    def evolve(self, **changes: Any) -> "Artifact":
        """A new artifact with `changes` applied; this one is left untouched."""
        return dataclasses.replace(self, **changes)

    def with_metrics(self, values: Mapping[str, float]) -> "Artifact":
        return self.evolve(metrics={**self.metrics, **values})

    def with_tags(self, values: Mapping[str, str]) -> "Artifact":
        return self.evolve(tags={**self.tags, **values})

    def with_files(self, paths: Mapping[str, Path]) -> "Artifact":
        return self.evolve(files={**self.files, **paths})

    @property
    def example(self) -> Batch:
        return self.batches[0]
