"""quantize: apply a registered quantization recipe to a copy of the model.

Adding a recipe: a function decorated with ``@quantize_recipe(name)`` here (or in a
plugin module) plus ``conf/quantize/<name>.yaml`` with ``method: <name>``.
"""
from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ptflow.artifact import Artifact, Form
from ptflow.errors import Problem, invalid_choice
from ptflow.modelinfo import serialized_size_mb
from ptflow.stage import Environment, RunContext, register_stage


@dataclass(frozen=True)
class Recipe:
    apply: Callable[[torch.nn.Module, "QuantizeConfig"], int]  # mutates the module; returns layers changed
    form: Form
    devices: frozenset[str] = frozenset({"cpu", "cuda"})


_RECIPES: dict[str, Recipe] = {}


def quantize_recipe(name: str, form: Form = Form.QUANTIZED, devices: frozenset[str] | None = None):
    def decorate(fn):
        _RECIPES[name] = Recipe(fn, form, devices or frozenset({"cpu", "cuda"}))
        return fn

    return decorate


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = "none"
    skip: tuple[str, ...] = ()   # module names kept in float (fnmatch patterns, e.g. "net.6")

    def __post_init__(self) -> None:
        if self.method not in _RECIPES:
            raise invalid_choice("method", self.method, sorted(_RECIPES))


@register_stage("quantize", config=QuantizeConfig)
class QuantizeStage:
    """Quantize a copy of the model with the chosen recipe; the baseline stays untouched."""

    requires = frozenset()
    provides = frozenset()

    def __init__(self, config: QuantizeConfig):
        self.config = config
        self.recipe = _RECIPES[config.method]

    def consumes(self) -> frozenset[Form]:
        return frozenset({Form.EAGER})

    def produces(self, given: Form | None) -> Form:
        return given if self.recipe.form is Form.EAGER else self.recipe.form

    def preflight(self, env: Environment) -> list[Problem]:
        if env.device_type not in self.recipe.devices:
            return [Problem("quantize.method", self.config.method,
                            "a recipe that runs on " + env.device_type,
                            f"'{self.config.method}' runs on {', '.join(sorted(self.recipe.devices))} only")]
        return []

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        if self.recipe.form is Form.EAGER:   # 'none': nothing to change, nothing to copy
            return artifact.with_metrics({"quantize.layers": 0.0,
                                          "quantize.size_mb": artifact.metrics.get("load.size_mb", 0.0)})
        module = copy.deepcopy(artifact.module)
        changed = self.recipe.apply(module, self.config)
        return artifact.evolve(model=module, module=module, form=self.recipe.form).with_metrics(
            {"quantize.layers": float(changed), "quantize.size_mb": serialized_size_mb(module)})


def _linear_filter(skip: tuple[str, ...], chosen: list[str]) -> Callable[[torch.nn.Module, str], bool]:
    def keep(module: torch.nn.Module, fqn: str) -> bool:
        if isinstance(module, torch.nn.Linear) and not any(fnmatch.fnmatchcase(fqn, p) for p in skip):
            chosen.append(fqn)
            return True
        return False

    return keep


def _import_torchao() -> None:
    """torchao logs failures to load its CUDA-only kernels on CPU machines: harmless noise."""
    noisy = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401
    finally:
        for logger, level in zip(noisy, levels):
            logger.setLevel(level)


@quantize_recipe("none", form=Form.EAGER)
def _no_quantization(module: torch.nn.Module, config: QuantizeConfig) -> int:
    return 0


@quantize_recipe("int8_dynamic")
def _int8_dynamic(module: torch.nn.Module, config: QuantizeConfig) -> int:
    """torchao int8 weights + per-token dynamic int8 activations for every nn.Linear."""
    _import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    chosen: list[str] = []
    quantize_(module, Int8DynamicActivationInt8WeightConfig(), filter_fn=_linear_filter(config.skip, chosen))
    return len(chosen)
