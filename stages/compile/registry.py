"""What a compile backend is written against: the ``compile`` config, the job a backend gets
(``CompileJob``), and the ``@compile_backend`` decorator that registers it. The stage
(``stage.py``) and every backend module import this module; it imports neither.

Adding a backend: a function decorated with ``@compile_backend(name, ...)`` (in a module of
the ``ptflow.stages`` entry-point group or a ``plugins`` module) plus
``conf/compile/<name>.yaml`` with ``backend: <name>``.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.core.artifact import RUNNABLE, Artifact, Form
from ptflow.core.errors import ConfigError, invalid_choice
from ptflow.core.stage import RunContext


class CompileMode(str, enum.Enum):
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"        # CUDA graphs
    MAX_AUTOTUNE = "max-autotune"
    MAX_AUTOTUNE_NO_CUDAGRAPHS = "max-autotune-no-cudagraphs"


class OrtOptimization(str, enum.Enum):
    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


@dataclass(frozen=True)
class OrtConfig:
    optimization: OrtOptimization = OrtOptimization.ALL   # onnxruntime graph optimization level
    threads: int | None = None       # intra-op threads; null: device.threads (what torch uses)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError.single("threads", self.threads, "an integer >= 1 or null (device.threads)")


@dataclass(frozen=True)
class CompileConfig:
    backend: str = "eager"               # a registered backend: eager, inductor, aoti, onnxruntime, ...
    mode: CompileMode = CompileMode.DEFAULT   # torch.compile mode (backend inductor only)
    fullgraph: bool = False              # fail instead of falling back on graph breaks
    dynamic: bool | None = None          # None: torch decides (recompiles once on a new shape)
    freezing: bool = True                # inductor: weights as constants (prepacked); PT2E int8 needs it
    channels_last: bool = False          # conv models: weights (and 4-D inputs) in channels_last
    cache: bool = True                   # inductor's cache under <outputs_dir>/cache/inductor, shared by runs
    ort: OrtConfig = field(default_factory=OrtConfig)

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise invalid_choice("backend", self.backend, sorted(_BACKENDS))
        if self.backend != "inductor" and self.mode is not CompileMode.DEFAULT:
            raise ConfigError.single("mode", self.mode.value, f"'default' with backend '{self.backend}'",
                                     "modes apply to compile=inductor (or pick compile=inductor_max_autotune, "
                                     "compile=cudagraphs)")


@dataclass
class CompileJob:
    """What a backend function gets."""

    model: Any                 # the runnable so far (an nn.Module, or a quantized/exported one)
    module: Any                # the nn.Module it came from
    artifact: Artifact
    config: CompileConfig
    ctx: RunContext
    out_dir: Path              # where a backend may write what it builds (<run dir>/compile)


@dataclass(frozen=True)
class Backend:
    name: str
    build: Callable[[CompileJob], Any]   # returns the runnable; lazy compilers compile on first call
    form: Form
    summary: str
    devices: frozenset[str]
    accepts: frozenset[Form]
    refusals: dict[Form, str]
    inductor: bool                       # uses inductor (freezing, cache apply)
    refuses_recipes: dict[str, str]      # quantize recipes it cannot take, and why
    keeps: frozenset[Form]               # forms handed on as they came (see compile_backend)
    uses_export: bool = False            # builds on torch.export: the eager model is traced after validate


_BACKENDS: dict[str, Backend] = {}


def compile_backend(name: str, *, summary: str, form: Form = Form.COMPILED,
                    devices: Sequence[str] = ("cpu", "cuda"), accepts: frozenset[Form] = RUNNABLE,
                    refusals: dict[Form, str] | None = None, inductor: bool = False,
                    refuses_recipes: dict[str, str] | None = None, keeps: frozenset[Form] = frozenset(),
                    uses_export: bool = False):
    """Register fn(CompileJob) -> runnable as compile.backend=`name`. `refusals` says, per
    form it does not accept, why (the plan's hint). `keeps`: forms the backend hands on
    unchanged instead of `form`, because what later stages transform (the module: export
    exports it) is still that form (torch.compile of a legacy_dynamic model still holds
    torch.ao's packed params, which torch.export cannot trace)."""

    def decorate(fn):
        _BACKENDS[name] = Backend(name, fn, form, summary, frozenset(devices), accepts, dict(refusals or {}),
                                  inductor, dict(refuses_recipes or {}), frozenset(keeps), uses_export)
        return fn

    return decorate


def backends() -> dict[str, Backend]:
    return dict(_BACKENDS)
