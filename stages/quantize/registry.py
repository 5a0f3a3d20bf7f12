"""What a quantization recipe is written against: the ``quantize`` config, the job a recipe
gets (``QuantizeJob``), what it returns (``Quantized``) and the ``@quantize_recipe``
decorator that registers it. The stage (``stage.py``) and every recipe module import this
module; it imports neither, so no import circle.

Adding a recipe: a function decorated with ``@quantize_recipe(name, ...)`` (in a module of
the ``ptflow.stages`` entry-point group or a ``plugins`` module) plus
``conf/quantize/<name>.yaml`` with ``method: <name>``.
"""
from __future__ import annotations

import enum
import fnmatch
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact, Form
from ptflow.core.errors import ConfigError, InputError, Problem, invalid_choice
from ptflow.core.stage import Environment, RunContext
from ptflow.inputs.calibration import CalibrationData

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


class Needs(str, enum.Enum):
    """What data a recipe needs besides the model."""

    NOTHING = "nothing"
    CALIBRATION = "calibration"    # batches run through observers (static PTQ)
    TRAINING = "training"          # labelled batches to fine-tune on (QAT)


@dataclass(frozen=True)
class CalibrationConfig:
    batches: int = 8                 # batches of data.calibration run through the prepared model
    batch_size: int | None = None    # null: data.batch_size

    def __post_init__(self) -> None:
        if self.batches < 1:
            raise ConfigError.single("batches", self.batches, "an integer >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError.single("batch_size", self.batch_size, "an integer >= 1 or null (data.batch_size)")


@dataclass(frozen=True)
class QatConfig:
    steps: int = 100                 # optimizer steps on data.calibration (the train split)
    lr: float = 1e-4                 # Adam learning rate

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError.single("steps", self.steps, "an integer >= 1")
        if not self.lr > 0:
            raise ConfigError.single("lr", self.lr, "a learning rate > 0, e.g. 1e-4")


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = "none"
    modules: tuple[str, ...] | None = None   # module types to change, e.g. [Linear, Conv2d]; null: the recipe's
    include: tuple[str, ...] = ()    # fnmatch patterns of module names to change ([] = every selected type)
    skip: tuple[str, ...] = ()       # fnmatch patterns of module names kept in float (e.g. "net.6")
    granularity: str | None = None   # per_row | per_tensor | per_group (see the recipe); null: its default
    group_size: int | None = None    # per_group / int4: weights per scale
    observer: str | None = None      # static PTQ activations: histogram | minmax | moving_average
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    qat: QatConfig = field(default_factory=QatConfig)

    def __post_init__(self) -> None:
        if self.method not in _RECIPES:
            raise invalid_choice("method", self.method, sorted(_RECIPES))
        recipe = _RECIPES[self.method]
        for key in ("granularity", "observer"):
            value, allowed = getattr(self, key), getattr(recipe, key + "s")
            if value is not None and value not in allowed:
                if not allowed:
                    raise ConfigError.single(key, value, f"null: '{self.method}' has no {key} choice")
                raise invalid_choice(key, value, allowed)
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError.single("group_size", self.group_size, "an integer >= 1, e.g. 128")
        if recipe.whole_model and (self.modules is not None or self.include or self.skip):
            raise ConfigError.single("modules" if self.modules is not None else "include" if self.include
                                     else "skip", self.modules or list(self.include or self.skip),
                                     f"null/[]: '{self.method}' changes the whole model")
        problems = [problem for name in self.modules or () if (problem := _unconvertible(recipe, name))]
        if problems:
            raise ConfigError(problems)


@dataclass
class Selection:
    """Which modules a recipe changes: leaves of the chosen types, narrowed by `include`,
    minus `skip`. A pattern that matches no module is an error, never a silent no-op."""

    types: tuple[type, ...]
    include: tuple[str, ...]
    skip: tuple[str, ...]

    def names(self, model: torch.nn.Module) -> list[str]:
        typed = [(n, m) for n, m in model.named_modules() if n and isinstance(m, self.types)]
        every = [n for n, _ in model.named_modules() if n]
        for key, patterns in (("include", self.include), ("skip", self.skip)):
            for pattern in patterns:
                if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in typed):
                    kinds = "/".join(t.__name__ for t in self.types)
                    raise InputError(f"quantize.{key}: pattern {pattern!r} matches no {kinds} module of "
                                     f"{type(model).__name__}; its modules: {_listing(every)}. Fix the "
                                     "pattern (fnmatch syntax: net.*, *.attn.*)")
        chosen = [n for n, _ in typed
                  if (not self.include or any(fnmatch.fnmatchcase(n, p) for p in self.include))
                  and not any(fnmatch.fnmatchcase(n, p) for p in self.skip)]
        if not chosen:
            kinds = "/".join(t.__name__ for t in self.types)
            raise InputError(f"quantize: no {kinds} module of {type(model).__name__} is left to quantize "
                             f"(include={list(self.include)}, skip={list(self.skip)}); its modules: "
                             f"{_listing(every)}. Set quantize.modules to types the model has, or "
                             "quantize=none")
        return chosen

    def filter(self, model: torch.nn.Module) -> Callable[[torch.nn.Module, str], bool]:
        """torchao's filter_fn: true for the modules this selection changes."""
        wanted = set(self.names(model))
        return lambda module, fqn: fqn in wanted


@dataclass
class QuantizeJob:
    """What a recipe function gets: a copy of the model to change, and the run around it."""

    module: torch.nn.Module
    config: QuantizeConfig
    artifact: Artifact
    ctx: RunContext
    selection: Selection
    data: CalibrationData | None


@dataclass
class Quantized:
    """What a recipe function returns."""

    model: Any                          # the runnable (often `module` itself)
    module: Any                         # what later stages transform and export
    changed: Sequence[str]              # names of the modules changed
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    apply: Callable[[QuantizeJob], Quantized]
    form: Form
    summary: str
    devices: frozenset[str]
    needs: Needs
    modules: tuple[str, ...]                 # default module types
    granularitys: tuple[str, ...]
    observers: tuple[str, ...]
    whole_model: bool                        # casts: no module selection
    check: Callable[[Environment], str | None] | None
    advice: Callable[[Environment], str | None] | None
    converts: tuple[str, ...]                # module types it can convert (quantize.modules may name)
    converted: Callable[[QuantizeJob, Quantized], Collection[str]] | None

    def can_convert(self, kind: type) -> bool:
        return any(issubclass(kind, module_type(name)) for name in self.converts)

    def converts_by_default(self, kind: type) -> bool:
        return any(issubclass(kind, module_type(name)) for name in self.modules)


_RECIPES: dict[str, Recipe] = {}


def quantize_recipe(name: str, *, summary: str, form: Form = Form.QUANTIZED,
                    devices: Sequence[str] = ("cpu", "cuda"), needs: Needs = Needs.NOTHING,
                    modules: Sequence[str] = ("Linear",), granularity: Sequence[str] = (),
                    observer: Sequence[str] = (), whole_model: bool = False,
                    check: Callable[[Environment], str | None] | None = None,
                    advice: Callable[[Environment], str | None] | None = None,
                    converts: Sequence[str] | None = None,
                    converted: Callable[[QuantizeJob, Quantized], Collection[str]] | None = None):
    """Register fn(QuantizeJob) -> Quantized as quantize.method=`name`.

    `modules` are the torch.nn types it changes by default, `converts` every type it can
    change (null: `modules`); quantize.modules may name only those. `converted(job, result)`
    names the modules of the float model (job.artifact.module) whose weights the recipe
    converted, for the coverage metrics; null: those whose weights changed type, dtype or
    values at the same name (stages/quantize/coverage.py).
    `check(env)` returns why this machine cannot run the recipe (shown before any work);
    `advice(env)` a warning about how the pipeline uses it (shown in the plan and the run).
    """

    def decorate(fn):
        _RECIPES[name] = Recipe(name, fn, form, summary, frozenset(devices), needs, tuple(modules),
                                tuple(granularity), tuple(observer), whole_model, check, advice,
                                tuple(modules if converts is None else converts), converted)
        return fn

    return decorate


def recipes() -> dict[str, Recipe]:
    return dict(_RECIPES)


_TYPE_NAMES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "LSTM", "GRU", "RNN", "LSTMCell",
               "GRUCell", "RNNCell", "MultiheadAttention", "Embedding")


def module_type(name: str) -> type:
    """'Linear' -> torch.nn.Linear; a dotted path -> that class."""
    import torch

    if "." not in name:
        if name not in _TYPE_NAMES:
            raise invalid_choice("modules", name, _TYPE_NAMES)
        return getattr(torch.nn, name)
    from ptflow.core.targets import _locate

    try:
        found = _locate(name)
    except ImportError as error:
        raise ConfigError.single("modules", name, "a torch.nn module type, e.g. Linear", str(error)) from None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise ConfigError.single("modules", name, "a torch.nn.Module subclass")
    return found


def converters(kind: type, besides: str = "") -> list[Recipe]:
    """The recipes that quantize modules of `kind` (casts aside), those converting it by
    default first."""
    found = [r for r in _RECIPES.values() if r.name != besides and not r.whole_model and r.can_convert(kind)]
    return sorted(found, key=lambda r: not r.converts_by_default(kind))


def handled_by(kind: type, besides: str = "") -> str:
    """Which recipe converts modules of `kind`: 'quantize=legacy_dynamic converts LSTM'."""
    found = converters(kind, besides)
    if not found:
        return f"no recipe quantizes {kind.__name__} (bf16/fp16 cast every weight)"
    first, others = found[0], [r.name for r in found[1:3]]
    option = "" if first.converts_by_default(kind) else f" with quantize.modules=[{kind.__name__}]"
    also = f" (or {', '.join(others)})" if others else ""
    return f"quantize={first.name}{option}{also} converts {kind.__name__}"


def _unconvertible(recipe: Recipe, name: str) -> Problem | None:
    """Why quantize.modules may not name `name` for `recipe`, or None."""
    kind = module_type(name)
    if recipe.form is Form.EAGER or recipe.can_convert(kind):
        return None
    return Problem("modules", name, f"a module type quantize={recipe.name} converts: {', '.join(recipe.converts)}",
                   handled_by(kind, besides=recipe.name))


def _listing(names: list[str], shown: int = 12) -> str:
    text = ", ".join(names[:shown])
    return text + (f", … (+{len(names) - shown} more)" if len(names) > shown else "")


def run_calibration(model: Any, data: CalibrationData, ctx: RunContext) -> None:
    """Run every calibration batch through `model` (observers record ranges); timed into
    `data.seconds`."""
    import torch

    from ptflow.core.spec import call

    started = time.perf_counter()
    with torch.no_grad():
        for batch in ctx.progress(data.batches, desc="calibrate", unit="batch"):
            call(model, batch.inputs)
    data.seconds += time.perf_counter() - started
