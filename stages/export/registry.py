"""The export formats: a registry of writers, one function (plus its reload function) per format.

Adding a format: a function decorated with ``@export_format(name, ...)`` that writes the
file at the path it is given, and a ``load`` function that reads it back into a fresh
callable; ``export.formats: [name]`` then picks it. The formats ptflow ships live beside
this module, in ``torch_formats`` (pt2, aoti, torchscript) and ``portable`` (safetensors,
onnx); the stage (``stage.py``) imports them. This module imports neither.

A writer declares what it cannot follow, so the plan refuses it before any work:
``refuses`` maps a Form to the reason, ``refuses_recipes`` a quantize recipe to the reason.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.core.artifact import Artifact, Form
from ptflow.core.files import named_errors
from ptflow.core.spec import InputSpec, ModelInputs
from ptflow.core.stage import RunContext

CHUNK = 1 << 22   # bytes per write: a signal or a full disk is noticed between chunks

# torchao's quantize_ recipes leave tensor subclasses in the weights (AffineQuantizedTensor ...)
TENSOR_SUBCLASS_RECIPES = ("int8_dynamic", "int8_weight_only", "int4_weight_only", "float8_dynamic")


@dataclass
class ExportJob:
    """What a writer gets: the module to export, the inputs to trace with, the run around it."""

    module: Any
    artifact: Artifact
    ctx: RunContext
    example: ModelInputs        # the inputs to trace with (a size-1 dynamic batch doubled)
    dynamic_shapes: Any         # torch.export's dynamic_shapes for the spec's dynamic dims
    strict: bool
    opset: int | None
    _program: Any = None

    @property
    def spec(self) -> InputSpec:
        return self.artifact.inputs

    def program(self) -> Any:
        """The torch.export program, traced once and shared by the formats built on it."""
        if self._program is None:
            import torch

            self._program = torch.export.export(self.module, self.example.args, dict(self.example.kwargs),
                                                dynamic_shapes=self.dynamic_shapes, strict=self.strict)
        return self._program


Reloaded = Callable[[ModelInputs], Any]    # inputs -> outputs (a structure flatten_outputs reads)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str                                  # file name: <export.name><suffix>
    write: Callable[[ExportJob, Path], dict[str, Any]]   # writes the file; returns extra manifest fields
    load: Callable[[Path, ExportJob], Reloaded]  # reads it back into a fresh callable
    tolerance: float                             # default largest max-abs difference after reload
    packages: tuple[str, ...]                    # distributions needed to load the file
    load_hint: str                               # one line of Python; {file} is the file name
    call_hint: str | None = None                 # Python computing `out` from what load_hint loaded and
                                                 # `args`/`kwargs`; None: the file holds weights only
    program: bool = False                        # a torch.export program: its ops and output classes
                                                 # must be importable to load it (requires.py)
    uses_export: bool = False                    # written from torch.export's program: the eager model
                                                 # is traced right after validate (diagnose.trace_check)
    host_inputs: bool = False                    # call_hint takes CPU tensors (onnxruntime's numpy), not
                                                 # tensors on the run's device
    precheck: Callable[[Any, ModelInputs], None] | None = None   # (eager module, inputs) right after
                                                 # validate: raise InputError for what would fail the write
    refuses: Mapping[Form, str] = field(default_factory=dict)
    refuses_recipes: Mapping[str, str] = field(default_factory=dict)
    summary: str = ""
    warm: tuple[str, ...] = ()                   # torch's own lazy modules its loader imports first thing
                                                 # (pt2: torch._dynamo): its fresh-process check imports
                                                 # them with torch, before the run times (export's start)


_FORMATS: dict[str, ExportFormat] = {}


def export_format(name: str, *, suffix: str, load: Callable[[Path, ExportJob], Reloaded], tolerance: float,
                  load_hint: str, call_hint: str | None = None, program: bool = False, uses_export: bool = False,
                  host_inputs: bool = False, precheck: Callable[[Any, ModelInputs], None] | None = None,
                  packages: Sequence[str] = ("torch",), summary: str = "", warm: Sequence[str] = (),
                  refuses: Mapping[Form, str] | None = None, refuses_recipes: Mapping[str, str] | None = None):
    """Register fn(ExportJob, path) -> extra manifest fields as export format `name`.

    ``load_hint`` and ``call_hint`` are what the manifest tells a user to run, and what the
    fresh-process check runs: ``load_hint`` (``{file}`` is the file name) loads the file,
    ``call_hint`` computes ``out`` from ``args`` and ``kwargs`` with what it loaded."""

    def decorate(fn):
        _FORMATS[name] = ExportFormat(name, suffix, fn, load, tolerance, tuple(packages), load_hint, call_hint,
                                      program, uses_export, host_inputs, precheck, dict(refuses or {}),
                                      dict(refuses_recipes or {}), summary, tuple(warm))
        return fn

    return decorate


def formats() -> dict[str, ExportFormat]:
    return dict(_FORMATS)


def write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write an in-memory serialisation with Python I/O, in chunks: a full disk is an OSError
    naming the file (torch's own zip writer aborts the process instead)."""
    view = memoryview(data)
    with named_errors(path), path.open("wb") as handle:
        for start in range(0, len(view), CHUNK):
            handle.write(view[start:start + CHUNK])


def flat_inputs(inputs: ModelInputs) -> list[Any]:
    """Inputs in the order exported graphs take them: positional, then keywords."""
    return list(inputs.args) + list(inputs.kwargs.values())


REGISTERED_BY_PTFLOW: set[type] = set()   # dataclasses register_output_types made pytree nodes


def register_output_types(value: object) -> None:
    """torch.export needs dataclass outputs registered as pytree nodes (Hugging Face's
    ModelOutput does this itself); register any plain dataclass the model returns (a fresh
    process loading the file must then register it too: the manifest's load line does)."""
    import torch
    from torch.utils import _pytree

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value) not in _pytree.SUPPORTED_NODES:
            cls = type(value)
            torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
            REGISTERED_BY_PTFLOW.add(cls)
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return
    for child in children:
        register_output_types(child)


def output_classes(value: object) -> list[type]:
    """Classes of the containers in a model's output that are not builtins or torch's (pytree
    nodes a loading process must know: a Hugging Face ModelOutput, a dataclass)."""
    import torch

    found: list[type] = []
    if isinstance(value, torch.Tensor) or value is None:
        return found
    if isinstance(value, (dict, list, tuple)) or dataclasses.is_dataclass(value):
        cls = type(value)
        if cls.__module__ not in ("builtins", "collections") and not cls.__module__.startswith("torch"):
            found.append(cls)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            children = [getattr(value, f.name) for f in dataclasses.fields(value)]
        elif isinstance(value, dict):
            children = list(value.values())
        else:
            children = list(value)
        for child in children:
            found.extend(c for c in output_classes(child) if c not in found)
    return found


def output_packages(value: object) -> set[str]:
    """Top-level packages of the classes a model's outputs are made of (e.g. transformers),
    beyond builtins and torch: loading the file needs them importable."""
    return {cls.__module__.split(".")[0] for cls in output_classes(value)}
