"""Models nobody here wrote, through every CPU quantize recipe the plan accepts for them, as a
user would run them (load → validate → quantize → export pt2, or torchscript where pt2 cannot
follow): a tiny BERT from a local directory, LSTM and GRU classifiers, a model that branches on
its input's values, a regressor and a residual CNN.

For every cell: the plan refuses it (with a reason), or the run ends in one of the outcomes
written down in EXPECTED — and then the export loads in a fresh process, the quantize coverage
is logged, nothing is a silent no-op, and a refusal after validate comes before quantize."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.errors import ConfigError, StageError
from tests.conftest import compose, make_context

RECIPES = ("none", "int8_dynamic", "int8_weight_only", "int8_static", "int8_qat", "bf16", "fp16", "autocast_bf16",
           "autocast_fp16", "legacy_dynamic")
QUICK = ("model.weights=null", "data.max_batches=1", "tracking=none", "quantize.calibration.batches=1",
         "quantize.qat.steps=2")

MODELS = {   # name -> (overrides, builder)
    "bert": (("data=random",), None),   # builder and data set in _config (a local directory)
    "lstm": (("data=digits_rows",), "tests.toy_models.rows_lstm"),
    "gru": (("data=digits_rows",), "tests.toy_models.rows_gru"),
    "branchy": ((), "tests.toy_models.BranchyNet"),
    "regressor": (("data.metric=mse",), "tests.regression_models.Regressor"),
    "residual_cnn": (("data=digits_images",), "tests.toy_models.ResidualCNN"),
}
# what each accepted cell does; absent cells: exported and checked in a fresh process.
# "early": stopped right after validate (export's torch.export check), "quantize: <text>": the
# quantize stage fails saying <text>, "warns": exported, with the coverage warning.
EXPECTED = {
    **{("branchy", r): "early" for r in RECIPES},
    # transformers' masking checks `(mask == 1).all()`: a trace would bake in this example's padding
    ("bert", "legacy_dynamic"): "early",
    **{(m, r): "warns" for m in ("lstm", "gru") for r in ("int8_dynamic", "int8_weight_only", "int8_static",
                                                           "int8_qat")},
    ("lstm", "autocast_fp16"): "quantize: autocast_fp16",   # oneDNN has no fp16 LSTM on CPU
    ("gru", "autocast_bf16"): "warns",    # CPU autocast runs GRU in float32: most weights stay float
    ("gru", "autocast_fp16"): "warns",
    ("residual_cnn", "int8_dynamic"): "warns",
    ("residual_cnn", "int8_weight_only"): "warns",
    ("residual_cnn", "legacy_dynamic"): "warns",
    ("residual_cnn", "int8_static"): "quantize: Give each call its own module",   # PT2E upstream, named
    ("residual_cnn", "int8_qat"): "quantize: Give each call its own module",
}


class Started:
    def __init__(self):
        self.names: list[str] = []

    def before_stage(self, planned, artifact):
        self.names.append(planned.name)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bert") / "bert"
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def _config(model: str, recipe: str, bert_dir: Path, fmt: str):
    overrides, builder = MODELS[model]
    config, choices = compose(*QUICK, *overrides, f"quantize={recipe}", f"export.formats=[{fmt}]",
                              "pipeline=[load,validate,quantize,export]")
    if model == "bert":
        config["model"].update(builder={"_target_": "ptflow.inputs.hf.from_pretrained", "path": str(bert_dir),
                                        "auto_class": "AutoModelForSequenceClassification"}, output_key="logits")
        config["data"]["source"] = {"_target_": "ptflow.inputs.datasources.random_inputs", "rows": 32, "seed": 0,
                                    "inputs": {"input_ids": {"shape": [16], "dtype": "int64", "high": 100},
                                               "attention_mask": {"shape": [16], "dtype": "int64", "high": 2}}}
        config["data"]["batch_size"] = 16
    else:
        config["model"]["builder"] = {"_target_": builder}
    if model == "regressor":
        config["data"].update(source={"_target_": "tests.regression_models.regression_split"},
                              calibration={"_target_": "tests.regression_models.regression_split", "seed": 1},
                              batch_size=32)
    return config, choices


def _plan(model, recipe, bert_dir):
    """The plan for pt2, else torchscript (what legacy_dynamic can export); None when both are refused."""
    for fmt in ("pt2", "torchscript"):
        try:
            return compile_plan(*_config(model, recipe, bert_dir, fmt))
        except ConfigError as error:
            assert all(p.render() for p in error.problems)   # a refusal always says why
    return None


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_each_user_model_through_every_recipe_the_plan_accepts(tmp_path, bert_dir, model):
    ran, wrong = [], []
    for recipe in RECIPES:
        plan = _plan(model, recipe, bert_dir)
        if plan is None:
            continue
        expected = EXPECTED.get((model, recipe), "exports")
        started, run_dir = Started(), tmp_path / recipe
        warnings: dict[str, str] = {}
        ctx = make_context(run_dir, plan)
        ctx = type(ctx)(**{**ctx.__dict__, "warn": warnings.__setitem__})
        try:
            artifact, error = engine.run(plan, ctx, [started]), None
        except StageError as failure:
            artifact, error = None, failure
        got = _outcome(artifact, error, started.names, warnings, run_dir)
        ran.append(recipe)
        if not _matches(expected, got):
            wrong.append(f"{model} × {recipe}: expected {expected}, got {got}")
    assert ran, f"the plan refused every recipe for {model}"
    assert not wrong, "\n".join(wrong)


def _matches(expected: str, got: str) -> bool:
    if expected.startswith("quantize: "):
        return got.startswith("quantize: ") and expected.removeprefix("quantize: ") in got
    return got == expected


def _outcome(artifact, error, started, warnings, run_dir) -> str:
    if error is not None:
        if error.stage == "export" and "quantize" not in started:
            return "early" if "right after validate" in str(error) else f"export before quantize?: {error}"
        if error.stage == "quantize":
            return f"quantize: {error}"
        return f"failed in {error.stage}: {error}"
    metrics = artifact.metrics
    if "quantize.coverage.params" not in metrics:
        return "no coverage logged"
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    if not all(e["metrics"].get("fresh_check_s", 0) > 0 for e in manifest["files"]):
        return "not checked in a fresh process"
    if metrics.get("quantize.layers", 0) and metrics["quantize.coverage.params"] == 0:
        return "silent no-op"
    return "warns" if "quantize.coverage" in warnings else "exports"
