"""quantize: apply a registered quantization recipe to a copy of the model, calibrating it
first when the recipe needs data.

The recipes are registered in ``registry.py`` (what a recipe is written against); the ones
ptflow ships live beside it: ``torchao``, ``pt2e``, ``cast`` and ``legacy``.
"""
from __future__ import annotations

import copy
import time

from ptflow.core.artifact import Artifact, Form, StageRecord
from ptflow.core.errors import InputError, Problem
from ptflow.core.stage import Environment, Note, RunContext, register_stage
from ptflow.inputs.calibration import load_calibration
from ptflow.measure.modelinfo import model_size_mb
from ptflow.stages.quantize.coverage import (MOSTLY_FLOAT, Coverage, changed_modules, flop_shares, mostly_float,
                                             nothing_converted, weight_modules)
from ptflow.stages.quantize.registry import (_RECIPES, Needs, QuantizeConfig, QuantizeJob, Quantized, Selection,
                                             module_type, quantize_recipe)

ALL_FORMS = frozenset(Form)


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
            return artifact.with_metrics({"quantize.layers": 0.0, "quantize.coverage.params": 0.0,
                                          "quantize.size_mb_before": size_before, "quantize.size_mb": size_before})
        config = self.config
        types = tuple(module_type(name) for name in (config.modules or self.recipe.modules))
        selection = Selection(types, config.include, config.skip)
        census = self._census(artifact.module, selection)
        data, lineage, datasets = None, artifact.lineage, artifact.datasets
        if self.recipe.needs is not Needs.NOTHING:
            data = load_calibration(artifact, config.calibration.batches, config.calibration.batch_size,
                                    ctx.device)
            datasets = datasets + (data.info,)
        job = QuantizeJob(copy.deepcopy(artifact.module), config, artifact, ctx, selection, data)
        started = time.perf_counter()
        result = self.recipe.apply(job)
        took = time.perf_counter() - started
        coverage = self._coverage(job, result, census)
        if data is not None:
            lineage = lineage + (StageRecord("calibrate", data.describe(), data.seconds, Form.EAGER,
                                             self.recipe.form),)
        size_after = model_size_mb(result.module)
        metrics = {"quantize.layers": float(len(result.changed)), "quantize.quantize_s": took,
                   "quantize.size_mb_before": size_before, "quantize.size_mb": size_after,
                   "quantize.size_ratio": size_after / size_before if size_before else float("nan"),
                   **coverage.metrics(), **result.metrics}
        if data is not None:
            metrics.update({"quantize.calibration_batches": float(len(data.batches)),
                            "quantize.calibration_examples": float(data.examples),
                            "quantize.calibrate_s": data.seconds})
        return artifact.evolve(model=result.model, module=result.module, form=self.recipe.form,
                               lineage=lineage, datasets=datasets,
                               series={**artifact.series, **result.series}).with_metrics(metrics) \
            .with_tags(coverage.tags())

    def _census(self, module: object, selection: Selection) -> dict[str, tuple[type, int]]:
        """The model's weight modules; refuses a recipe with nothing to convert before any work."""
        name, recipe = type(module).__name__, self.recipe
        census = weight_modules(module)
        if not census:
            raise InputError(f"quantize={recipe.name}: {name} has no weights (parameters of 2+ dimensions) to "
                             "quantize; use quantize=none")
        if not recipe.whole_model and not any(issubclass(kind, selection.types) for kind, _ in census.values()):
            raise nothing_converted(Coverage.of(census, ()), recipe, selection, name, present=False)
        return census

    def _coverage(self, job: QuantizeJob, result: Quantized, census: dict[str, tuple[type, int]]) -> Coverage:
        """What share of the weights the recipe converted: an error when none, a warning when
        most stayed float."""
        float_model, recipe = job.artifact.module, self.recipe
        converted = (recipe.converted or _same_names)(job, result)
        coverage = Coverage.of(census, set(converted), flop_shares(float_model, job.artifact.example.inputs, census))
        name = type(float_model).__name__
        if coverage.modules == 0:
            raise nothing_converted(coverage, recipe, job.selection, name, present=True)
        if coverage.params < MOSTLY_FLOAT:
            job.ctx.warn("quantize.coverage", mostly_float(coverage, recipe, job.selection, name))
        return coverage


def _same_names(job: QuantizeJob, result: Quantized) -> set[str]:
    """The default `converted`: weight modules changed in place, under the same names."""
    return changed_modules(job.artifact.module, result.module)


def _describe_source(node: object) -> str:
    if not isinstance(node, dict):
        return ""
    args = " ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
    return f"({node.get('_target_')} {args})".replace(" )", ")")


@quantize_recipe("none", summary="keep the float model (the fp32 recipe)", form=Form.EAGER, modules=())
def _no_quantization(job: QuantizeJob) -> Quantized:
    return Quantized(job.module, job.module, [])



# The recipes ptflow ships (each module registers its own with @quantize_recipe).
from ptflow.stages.quantize import cast, legacy, pt2e, torchao  # noqa: E402,F401
