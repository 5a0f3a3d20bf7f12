"""quantize: apply a registered quantization recipe to a copy of the model, calibrating it
first when the recipe needs data.

The recipes are registered in ``registry.py`` (what a recipe is written against); the ones
ptflow ships live beside it: ``torchao``, ``pt2e``, ``cast`` and ``legacy``.
"""
from __future__ import annotations

import copy
import time

from ptflow.core.artifact import Artifact, Form, StageRecord
from ptflow.core.errors import Problem
from ptflow.core.stage import Environment, Note, RunContext, register_stage
from ptflow.inputs.calibration import load_calibration
from ptflow.measure.modelinfo import model_size_mb
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


@quantize_recipe("none", summary="keep the float model (the fp32 recipe)", form=Form.EAGER, modules=())
def _no_quantization(job: QuantizeJob) -> Quantized:
    return Quantized(job.module, job.module, [])



# The recipes ptflow ships (each module registers its own with @quantize_recipe).
from ptflow.stages.quantize import cast, legacy, pt2e, torchao  # noqa: E402,F401
