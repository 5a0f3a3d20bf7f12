"""quantize: apply a registered quantization recipe to a copy of the model, calibrating it
first when the recipe needs data.

Adding a recipe: a function decorated with ``@quantize_recipe(name, ...)`` (in a module of
the ``ptflow.stages`` entry-point group or a ``plugins`` module) plus
``conf/quantize/<name>.yaml`` with ``method: <name>``. The recipes ptflow ships live in
``quantize_torchao``, ``quantize_pt2e``, ``quantize_cast`` and ``quantize_legacy``.
"""
from __future__ import annotations

import copy
import enum
import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ptflow.artifact import Artifact, Form, StageRecord
from ptflow.calibration import CalibrationData, load_calibration
from ptflow.errors import ConfigError, InputError, Problem, invalid_choice
from ptflow.modelinfo import model_size_mb
from ptflow.stage import Environment, Note, RunContext, register_stage

ALL_FORMS = frozenset(Form)


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
        for name in self.modules or ():
            module_type(name)


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


_RECIPES: dict[str, Recipe] = {}


def quantize_recipe(name: str, *, summary: str, form: Form = Form.QUANTIZED,
                    devices: Sequence[str] = ("cpu", "cuda"), needs: Needs = Needs.NOTHING,
                    modules: Sequence[str] = ("Linear",), granularity: Sequence[str] = (),
                    observer: Sequence[str] = (), whole_model: bool = False,
                    check: Callable[[Environment], str | None] | None = None,
                    advice: Callable[[Environment], str | None] | None = None):
    """Register fn(QuantizeJob) -> Quantized as quantize.method=`name`.

    `check(env)` returns why this machine cannot run the recipe (shown before any work);
    `advice(env)` a warning about how the pipeline uses it (shown in the plan and the run).
    """

    def decorate(fn):
        _RECIPES[name] = Recipe(name, fn, form, summary, frozenset(devices), needs, tuple(modules),
                                tuple(granularity), tuple(observer), whole_model, check, advice)
        return fn

    return decorate


def recipes() -> dict[str, Recipe]:
    return dict(_RECIPES)


_TYPE_NAMES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "LSTM", "GRU",
               "MultiheadAttention", "Embedding")


def module_type(name: str) -> type:
    """'Linear' -> torch.nn.Linear; a dotted path -> that class."""
    if "." not in name:
        if name not in _TYPE_NAMES:
            raise invalid_choice("modules", name, _TYPE_NAMES)
        return getattr(torch.nn, name)
    from ptflow.targets import _locate

    try:
        found = _locate(name)
    except ImportError as error:
        raise ConfigError.single("modules", name, "a torch.nn module type, e.g. Linear", str(error)) from None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise ConfigError.single("modules", name, "a torch.nn.Module subclass")
    return found


@register_stage("quantize", config=QuantizeConfig)
class QuantizeStage:
    """Quantize a copy of the model with the chosen recipe, calibrating it first if it needs data.

    The baseline stays untouched."""

    requires = frozenset()
    provides = frozenset()

    def __init__(self, config: QuantizeConfig):
        self.config = config
        self.recipe = _RECIPES[config.method]

    def consumes(self) -> frozenset[Form]:
        # 'none' passes any model on; a real recipe needs the float nn.Module
        return ALL_FORMS if self.recipe.form is Form.EAGER else frozenset({Form.EAGER})

    def produces(self, given: Form | None) -> Form:
        return given if self.recipe.form is Form.EAGER else self.recipe.form

    def refusal(self, given: Form) -> str | None:
        if given in (Form.SCRIPTED, Form.EXPORTED) and self.recipe.form is not Form.EAGER:
            return (f"quantize={self.config.method} transforms a float nn.Module; a {given} model is "
                    "frozen. Load the weights as a state_dict with model.builder, or use quantize=none")
        return None

    def preflight(self, env: Environment) -> list[Problem]:
        recipe, method = self.recipe, self.config.method
        if env.device_type not in recipe.devices:
            return [Problem("quantize.method", method, "a recipe that runs on " + env.device_type,
                            f"'{method}' needs device={' or '.join(sorted(recipe.devices))}"
                            + (" (a CUDA GPU)" if recipe.devices == {"cuda"} else "")
                            + f"; this run is on {env.device_type}")]
        problems = []
        if recipe.check is not None:
            missing = recipe.check(env)
            if missing:
                problems.append(Problem("quantize.method", method, "a recipe this machine can run", missing))
        data = env.config.get("data") or {}
        if recipe.needs is not Needs.NOTHING and not data.get("calibration"):
            problems.append(Problem("data.calibration", None, f"a `_target_` node giving {recipe.needs.value} "
                                    f"data: quantize={method} needs it",
                                    "point it at a split that is not the eval data, e.g. the train split"))
        return problems

    def explain(self, env: Environment) -> list[Note]:
        notes = []
        if self.recipe.needs is not Needs.NOTHING:
            data = env.config.get("data") or {}
            size = self.config.calibration.batch_size or data.get("batch_size")
            source = _describe_source(data.get("calibration"))
            if self.recipe.needs is Needs.CALIBRATION:
                notes.append(Note(f"calibrate: {self.config.calibration.batches} batch(es) of {size} from "
                                  f"data.calibration {source}"))
            else:
                notes.append(Note(f"train (QAT): {self.config.qat.steps} step(s) on batches of {size} from "
                                  f"data.calibration {source}, lr {self.config.qat.lr:g}"))
        if self.recipe.advice is not None:
            advice = self.recipe.advice(env)
            if advice:
                notes.append(Note(advice, warning=f"quantize.{self.config.method}"))
        return notes

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        size_before = model_size_mb(artifact.module)
        if self.recipe.form is Form.EAGER:   # 'none': nothing to change, nothing to copy
            return artifact.with_metrics({"quantize.layers": 0.0, "quantize.size_mb_before": size_before,
                                          "quantize.size_mb": size_before})
        config = self.config
        data, lineage, datasets = None, artifact.lineage, artifact.datasets
        if self.recipe.needs is not Needs.NOTHING:
            data = load_calibration(artifact, config.calibration.batches, config.calibration.batch_size,
                                    ctx.device)
            datasets = datasets + (data.info,)
        types = tuple(module_type(name) for name in (config.modules or self.recipe.modules))
        job = QuantizeJob(copy.deepcopy(artifact.module), config, artifact, ctx,
                          Selection(types, config.include, config.skip), data)
        started = time.perf_counter()
        result = self.recipe.apply(job)
        took = time.perf_counter() - started
        if data is not None:
            lineage = lineage + (StageRecord("calibrate", data.describe(), data.seconds, Form.EAGER,
                                             self.recipe.form),)
        size_after = model_size_mb(result.module)
        metrics = {"quantize.layers": float(len(result.changed)), "quantize.quantize_s": took,
                   "quantize.size_mb_before": size_before, "quantize.size_mb": size_after,
                   "quantize.size_ratio": size_after / size_before if size_before else float("nan"),
                   **result.metrics}
        if data is not None:
            metrics.update({"quantize.calibration_batches": float(len(data.batches)),
                            "quantize.calibration_examples": float(data.examples),
                            "quantize.calibrate_s": data.seconds})
        return artifact.evolve(model=result.model, module=result.module, form=self.recipe.form,
                               lineage=lineage, datasets=datasets,
                               series={**artifact.series, **result.series}).with_metrics(metrics)


def _describe_source(node: object) -> str:
    if not isinstance(node, dict):
        return ""
    args = " ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
    return f"({node.get('_target_')} {args})".replace(" )", ")")


def _listing(names: list[str], shown: int = 12) -> str:
    text = ", ".join(names[:shown])
    return text + (f", … (+{len(names) - shown} more)" if len(names) > shown else "")


def run_calibration(model: Any, data: CalibrationData, ctx: RunContext) -> None:
    """Run every calibration batch through `model` (observers record ranges); timed into
    `data.seconds`."""
    from ptflow.spec import call

    started = time.perf_counter()
    with torch.no_grad():
        for batch in ctx.progress(data.batches, desc="calibrate", unit="batch"):
            call(model, batch.inputs)
    data.seconds += time.perf_counter() - started


@quantize_recipe("none", summary="keep the float model (the fp32 recipe)", form=Form.EAGER, modules=())
def _no_quantization(job: QuantizeJob) -> Quantized:
    return Quantized(job.module, job.module, [])



# The recipes ptflow ships (each module registers its own with @quantize_recipe).
from ptflow.stages import quantize_cast, quantize_legacy, quantize_pt2e, quantize_torchao  # noqa: E402,F401
