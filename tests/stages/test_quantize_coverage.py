"""Quantization coverage is reported and never silent: the share of the weights each recipe
converted, a warning naming what stayed float and the recipe for it, quantize.modules a
recipe cannot convert refused by the plan, a recipe that converts nothing an error, and
PT2E's known upstream failure turned into one line of advice."""
from __future__ import annotations

import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.errors import ConfigError, InputError, StageError
from ptflow.core.spec import ModelInputs
import ptflow.stages.quantize.stage  # noqa: F401 (the stage registers the recipes ptflow ships)
from ptflow.stages.quantize.coverage import Coverage, changed_modules, flop_shares, weight_modules
from tests.conftest import compose, make_context
from tests.toy_models import ResidualCNN, rows_lstm

QUICK = ("model.weights=null", "data.max_batches=1", "benchmark=quick", "tracking=none",
         "quantize.calibration.batches=1", "quantize.qat.steps=2")
ONLY_QUANTIZE = "pipeline=[load,validate,quantize]"
RNN = {"LSTM": "tests.toy_models.rows_lstm", "GRU": "tests.toy_models.rows_gru"}
TOKENS = {"_target_": "ptflow.inputs.datasources.random_inputs", "rows": 16, "seed": 0,
          "inputs": {"tokens": {"shape": [6], "dtype": "int64", "high": 50}}}


def _config(builder: str, *overrides: str, **builder_args):
    data = "data=digits_images" if "ResidualCNN" in builder else "data=digits_rows"
    config, choices = compose(*QUICK, data, *overrides)
    config["model"]["builder"] = {"_target_": builder, **builder_args}
    return config, choices


def _token_bag_config(*overrides: str):
    config, choices = compose(*QUICK, *overrides)
    config["model"]["builder"] = {"_target_": "tests.toy_models.TokenBag"}
    config["data"].update({"source": TOKENS, "calibration": None, "metric": None, "batch_size": 8})
    return config, choices


def _run(tmp_path, config, choices, hooks=()):
    plan = compile_plan(config, choices)
    heard: dict[str, str] = {}
    ctx = make_context(tmp_path, plan)
    ctx = type(ctx)(**{**ctx.__dict__, "warn": heard.__setitem__})
    return engine.run(plan, ctx, hooks), heard


@pytest.mark.parametrize("cell,method", [("LSTM", "int8_dynamic"), ("GRU", "int8_dynamic"),
                                         ("LSTM", "int8_static")])
def test_a_recipe_that_leaves_the_rnn_float_warns_and_names_legacy_dynamic(tmp_path, cell, method):
    artifact, heard = _run(tmp_path, *_config(RNN[cell], f"quantize={method}", ONLY_QUANTIZE))
    m = artifact.metrics
    rnn_share = m[f"quantize.skipped.{cell}"]
    assert rnn_share > 0.9 and m["quantize.coverage.params"] == pytest.approx(1 - rnn_share)
    assert m["quantize.coverage.modules"] == 1 and m["quantize.layers"] == 1        # the Linear head only
    assert artifact.tags["quantize.skipped"] == f"{cell}:{rnn_share:.3f}"
    message = heard["quantize.coverage"]
    assert message.startswith(f"quantize={method} converted {m['quantize.coverage.params']:.1%} of RowsRNN's weights")
    assert f"left in float: {cell} {rnn_share:.1%} (quantize=legacy_dynamic converts {cell})" in message
    assert "\n" not in message


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_legacy_dynamic_converts_the_rnn_and_the_head(tmp_path, cell):
    artifact, heard = _run(tmp_path, *_config(RNN[cell], "quantize=legacy_dynamic", ONLY_QUANTIZE))
    m = artifact.metrics
    assert m["quantize.coverage.params"] == 1.0 and m["quantize.coverage.modules"] == 2
    assert not any(k.startswith("quantize.skipped") for k in m) and "quantize.skipped" not in artifact.tags
    assert "quantize.coverage" not in heard
    assert type(artifact.module.rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")


@pytest.mark.parametrize("method,kind,hint", [
    ("int8_static", "LSTM", "quantize=legacy_dynamic converts LSTM"),
    ("int8_dynamic", "LSTM", "quantize=legacy_dynamic converts LSTM"),
    ("int8_dynamic", "Conv2d", "quantize=int8_static (or int8_qat) converts Conv2d"),
    ("legacy_dynamic", "Embedding", "quantize=int8_dynamic with quantize.modules=[Embedding]"),
])
def test_modules_a_recipe_cannot_convert_are_refused_by_the_plan(method, kind, hint):
    config, choices = _config(RNN["LSTM"], f"quantize={method}", f"quantize.modules=[Linear,{kind}]")
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    (problem,) = caught.value.problems
    assert (problem.key, problem.found) == ("quantize.modules", kind)
    assert problem.expected.startswith(f"a module type quantize={method} converts: Linear")
    assert hint in problem.hint


@pytest.mark.parametrize("method,modules", [
    ("legacy_dynamic", "[LSTM,GRU,Linear]"), ("int8_weight_only", "[Linear,Embedding]"),
    ("int8_static", "[Conv2d]"), ("int8_dynamic", "[torch.nn.modules.linear.NonDynamicallyQuantizableLinear]"),
])
def test_modules_a_recipe_converts_pass_the_plan(method, modules):
    config, choices = _config(RNN["LSTM"], f"quantize={method}", f"quantize.modules={modules}", ONLY_QUANTIZE)
    compile_plan(config, choices)


def test_a_recipe_whose_module_types_the_model_lacks_fails_before_any_work(tmp_path):
    started = []

    class Hook:
        def before_stage(self, planned, artifact):
            started.append(planned.name)

    with pytest.raises(StageError) as caught:
        _run(tmp_path, *_token_bag_config("quantize=int8_dynamic", "experiment=latency_only"), hooks=[Hook()])
    assert caught.value.stage == "quantize" and isinstance(caught.value.cause, InputError)
    assert started == ["load", "validate", "quantize"]          # benchmark never started
    assert str(caught.value.cause) == (
        "quantize=int8_dynamic converts none of TokenBag's weights: it converts Linear modules, and the model "
        "has none; its weights are Embedding 100.0% (add Embedding to quantize.modules). Pick a recipe named "
        "there, or quantize=none")


def test_a_recipe_that_ran_and_converted_nothing_is_an_error(tmp_path):
    # autocast keeps an Embedding's lookup in float32: nothing on this model runs in bfloat16
    with pytest.raises(StageError) as caught:
        _run(tmp_path, *_token_bag_config("quantize=autocast_bf16", ONLY_QUANTIZE))
    message = str(caught.value.cause)
    assert isinstance(caught.value.cause, InputError)
    assert message.startswith("quantize=autocast_bf16 converts none of TokenBag's weights: it converts the whole "
                              "model (torch.autocast(bfloat16)")
    assert "none was converted here; its weights are Embedding 100.0% (quantize=int8_dynamic with " \
           "quantize.modules=[Embedding]" in message


@pytest.mark.parametrize("method", ["int8_static", "int8_qat"])
def test_pt2e_on_a_module_called_twice_fails_with_one_line_of_advice(tmp_path, method):
    with pytest.raises(StageError) as caught:
        _run(tmp_path, *_config("tests.toy_models.ResidualCNN", f"quantize={method}", ONLY_QUANTIZE))
    message = str(caught.value.cause)
    assert isinstance(caught.value.cause, InputError) and "\n" not in message
    assert "'Input partition has more than one output node'" in message
    assert "one module called more than once: relu (ReLU, 2 calls)" in message
    assert "Give each call its own module" in message and "quantize=int8_dynamic" in message


def test_the_advice_holds(tmp_path):
    # its own ReLU per call: PT2E quantizes every conv and the head
    artifact, _ = _run(tmp_path, *_config("tests.toy_models.ResidualCNN", "quantize=int8_static", ONLY_QUANTIZE,
                                          shared_relu=False))
    assert artifact.metrics["quantize.coverage.params"] == 1.0 and artifact.metrics["quantize.coverage.modules"] == 4
    # int8_dynamic runs on the shared-ReLU model, converting the head and warning about the convolutions
    artifact, heard = _run(tmp_path, *_config("tests.toy_models.ResidualCNN", "quantize=int8_dynamic", ONLY_QUANTIZE))
    assert artifact.metrics["quantize.coverage.params"] < 0.1
    assert "Conv2d" in heard["quantize.coverage"] and "quantize=int8_static" in heard["quantize.coverage"]


def test_weights_are_the_matrices_and_kernels_counted_once():
    model = ResidualCNN(width=4)
    census = weight_modules(model)
    assert set(census) == {"stem.0", "conv1", "conv2", "head"}            # batch norms hold 1-D scales
    assert census["conv1"] == (torch.nn.Conv2d, 4 * 4 * 9) and census["head"] == (torch.nn.Linear, 40)
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert weight_modules(tied) == {"0": (torch.nn.Embedding, 40)}


def test_changed_modules_sees_subclasses_dtypes_swapped_modules_and_new_values():
    before = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4),
                                 torch.nn.Linear(4, 4))
    after = type(before)(*(torch.nn.Linear(4, 4) for _ in range(4)))
    after.load_state_dict(before.state_dict())
    assert changed_modules(before, after) == set()
    after[0].half()
    with torch.no_grad():
        after[1].weight[0, 0] += 1
    after[2] = torch.nn.Identity()
    assert changed_modules(before, after) == {"0", "1", "2"}


def test_coverage_shares_and_flops():
    census = {"rnn": (torch.nn.LSTM, 90), "head": (torch.nn.Linear, 10)}
    coverage = Coverage.of(census, {"head"})
    assert coverage.params == pytest.approx(0.1) and coverage.left == {torch.nn.LSTM: pytest.approx(0.9)}
    assert coverage.metrics()["quantize.skipped.LSTM"] == pytest.approx(0.9) and coverage.flops is None
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    shares = flop_shares(mlp, ModelInputs((torch.randn(3, 8),), {}), weight_modules(mlp))
    assert shares == {"0": pytest.approx(128 / 192), "2": pytest.approx(64 / 192)}
    # an LSTM's arithmetic runs inside one fused op on CPU: no FLOPs share rather than a wrong one
    lstm = rows_lstm().eval()
    rows = ModelInputs((), {"rows": torch.randn(2, 8, 8), "mask": torch.ones(2, 8)})
    assert flop_shares(lstm, rows, weight_modules(lstm)) is None


@pytest.mark.slow
def test_the_warning_reaches_the_console_the_tags_the_metrics_and_the_summary(tmp_path, monkeypatch):
    from tests.conftest import ROOT, mlflow_runs, run_cli

    monkeypatch.setenv("PYTHONPATH", str(ROOT))   # the child process imports tests.toy_models
    result = run_cli(tmp_path, "~model.builder", "+model.builder={_target_:tests.toy_models.rows_lstm}",
                     "model.weights=null", "data=digits_rows", "quantize=int8_dynamic",
                     "experiment=latency_only", "benchmark=quick")
    assert result.code == 0, result.stderr
    says = "quantize=int8_dynamic converted 5.9% of RowsRNN's weights; left in float: LSTM 94.1% " \
           "(quantize=legacy_dynamic converts LSTM)"
    assert f"ptflow: warning: {says}" in result.stderr
    assert f"  warning: {says}" in result.stdout and "weights quantized" in result.stdout
    (run,) = mlflow_runs(result)
    assert run.data.tags["ptflow.warning.quantize.coverage"] == says
    assert run.data.tags["quantize.skipped"] == "LSTM:0.941"
    assert run.data.metrics["quantize/coverage.params"] == pytest.approx(320 / 5440)
