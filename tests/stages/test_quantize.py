"""The quantize family in-process on a tiny MLP: every CPU recipe runs, calibrates on data
that is not the eval data, logs what it changed and sizes measured alike, and is judged
by the accuracy gate."""
from __future__ import annotations

import re

import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.artifact import DataContext, Form
from ptflow.core.errors import ConfigError, Rejected, StageError
from ptflow.stages.quantize import recipes
import ptflow.stages.quantize.stage  # noqa: F401 (the stage registers the recipes ptflow ships)
from tests.conftest import compose, make_context

TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "tracking=none", "quantize.calibration.batches=2", "quantize.qat.steps=3")
NO_EXPORT = "pipeline=[load,validate,quantize,benchmark]"
CPU_RECIPES = sorted(name for name, r in recipes().items() if "cpu" in r.devices)
GPU_RECIPES = sorted(name for name, r in recipes().items() if "cpu" not in r.devices)


def _run(tmp_path, *overrides, hooks=()):
    config, choices = compose(*TINY, *overrides)
    plan = compile_plan(config, choices)
    warnings: dict[str, str] = {}
    ctx = make_context(tmp_path, plan)
    ctx = type(ctx)(**{**ctx.__dict__, "warn": warnings.__setitem__})
    return engine.run(plan, ctx, hooks), warnings


def test_the_issue_names_every_recipe():
    assert set(recipes()) == {"none", "int8_dynamic", "int8_weight_only", "int8_static", "int8_qat",
                              "legacy_dynamic", "bf16", "fp16", "autocast_bf16", "autocast_fp16",
                              "int4_weight_only", "float8_dynamic"}
    assert GPU_RECIPES == ["float8_dynamic", "int4_weight_only"]


@pytest.mark.parametrize("method", CPU_RECIPES)
def test_every_cpu_recipe_runs_and_reports_what_it_did(tmp_path, method):
    artifact, warnings = _run(tmp_path, f"quantize={method}", NO_EXPORT)
    m = artifact.metrics
    whole_model_keeps_weights = method in ("none", "autocast_bf16", "autocast_fp16")
    assert (m["quantize.layers"] == 0) == whole_model_keeps_weights
    # sizes are measured the same way before and after: equal when the weights are kept
    if whole_model_keeps_weights:
        assert m["quantize.size_mb"] == pytest.approx(m["quantize.size_mb_before"])
    elif method in ("bf16", "fp16"):
        assert m["quantize.size_mb"] < m["quantize.size_mb_before"] * 0.6
    else:
        assert m["quantize.size_mb"] < m["quantize.size_mb_before"] * 0.5
    # fidelity for every recipe, per output leaf, and the accuracy verdict
    for stat in ("max_abs_error", "mean_abs_error", "p99_abs_error", "max_rel_error", "mean_rel_error",
                 "p99_rel_error", "cosine"):
        assert f"benchmark.fidelity.output.{stat}" in m
    assert m["benchmark.fidelity.output.p99_abs_error"] <= m["benchmark.fidelity.output.max_abs_error"]
    assert -1.0 <= m["benchmark.fidelity.output.cosine"] <= 1.0 + 1e-9
    assert "benchmark.top1_agreement" in m and "accuracy.drop" in m
    assert artifact.tags["accepted"] in ("true", "false")
    assert (artifact.tags["accepted"] == "true") == (m["accuracy.accepted"] == 1.0)
    if method == "none":
        assert m["benchmark.fidelity.output.max_abs_error"] == 0 and m["benchmark.fidelity.output.cosine"] == 1
    # every recipe converts every Linear of the MLP (autocast: each runs in low precision)
    assert m["quantize.coverage.params"] == (0.0 if method == "none" else 1.0)
    if method != "none":
        assert m["quantize.coverage.flops"] == pytest.approx(1.0) and m["quantize.coverage.modules"] == 3
    assert "quantize.coverage" not in warnings and "quantize.skipped" not in artifact.tags
    if method == "legacy_dynamic":
        assert artifact.form is Form.PACKED and "deprecated" in warnings["quantize.legacy"]


def test_calibration_uses_other_rows_than_the_eval_data_and_shows_in_plan_and_lineage(tmp_path):
    config, choices = compose(*TINY, "quantize=int8_static", NO_EXPORT)
    rendered = compile_plan(config, choices).render()
    assert "calibrate: 2 batch(es) of 150 from data.calibration" in rendered and "split=train" in rendered
    assert "warning: a PT2E-converted model" in rendered    # no compile=inductor follows
    artifact, warnings = _run(tmp_path, "quantize=int8_static", NO_EXPORT)
    assert [r.name for r in artifact.lineage] == ["load", "validate", "calibrate", "quantize", "benchmark"]
    calibrate = artifact.lineage[2]
    assert calibrate.config["batches"] == 2 and calibrate.config["examples"] == 300
    contexts = {d.context: d for d in artifact.datasets}
    assert contexts[DataContext.CALIBRATION].digest != contexts[DataContext.EVAL].digest
    assert artifact.metrics["quantize.calibration_examples"] == 300
    assert "quantize.int8_static" in warnings


def test_calibrating_on_the_eval_rows_is_refused(tmp_path):
    with pytest.raises(StageError, match=r"data.calibration shares 150 row\(s\) with the eval data"):
        _run(tmp_path, "quantize=int8_static", NO_EXPORT, "data.calibration.split=test")


def test_a_recipe_that_needs_data_without_data_calibration_is_refused_by_the_plan():
    config, choices = compose(*TINY, "quantize=int8_qat", "data.calibration=null")
    with pytest.raises(ConfigError, match="data.calibration.*quantize=int8_qat needs it"):
        compile_plan(config, choices)


def test_static_int8_followed_by_inductor_gets_no_warning():
    config, choices = compose(*TINY, "quantize=int8_static", "compile=inductor")
    assert "warning" not in compile_plan(config, choices).render()


@pytest.mark.parametrize("key", ["skip", "include"])
def test_a_module_pattern_that_matches_nothing_is_an_error(tmp_path, key):
    with pytest.raises(StageError, match=rf"quantize.{key}: pattern 'net.9\*' matches no Linear.*net.0"):
        _run(tmp_path, "quantize=int8_dynamic", NO_EXPORT, f"quantize.{key}=[net.9*]")


def test_skip_keeps_the_named_layers_in_float(tmp_path):
    artifact, _ = _run(tmp_path, "quantize=int8_dynamic", NO_EXPORT, "quantize.skip=[net.4]")
    assert artifact.metrics["quantize.layers"] == 2
    assert type(artifact.module.net[4].weight) is torch.nn.Parameter           # still float
    assert type(artifact.module.net[0].weight) is not torch.nn.Parameter       # a torchao subclass


def test_options_a_recipe_does_not_have_are_refused():
    for override, key in (("quantize.observer=minmax", "observer"), ("quantize.granularity=per_fortnight",
                                                                       "granularity"),
                          ("quantize.skip=[net.0]", "skip"), ("quantize.modules=[Bogus]", "modules")):
        method = "bf16" if key == "skip" else "int8_dynamic"
        config, choices = compose(*TINY, f"quantize={method}", override)
        with pytest.raises(ConfigError, match=f"quantize.{key}"):
            compile_plan(config, choices)


def test_qat_logs_its_training_loss_per_step(tmp_path):
    artifact, _ = _run(tmp_path, "quantize=int8_qat", NO_EXPORT)
    losses = artifact.series["quantize.qat_loss"]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)
    assert artifact.metrics["quantize.qat_loss_last"] == losses[-1]


@pytest.mark.parametrize("method", GPU_RECIPES)
def test_gpu_recipes_are_refused_on_cpu_before_any_work(method):
    config, choices = compose(*TINY, f"quantize={method}")
    with pytest.raises(ConfigError, match=f"quantize.method: found '{method}'.*needs device=cuda"):
        compile_plan(config, choices)


@pytest.mark.cuda
@pytest.mark.parametrize("method", GPU_RECIPES + ["bf16", "autocast_fp16", "int8_dynamic"])
def test_recipes_on_cuda(tmp_path, method):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    major, minor = torch.cuda.get_device_capability()
    if method == "float8_dynamic" and (major, minor) < (8, 9):
        pytest.skip("float8 needs compute capability >= 8.9")
    artifact, _ = _run(tmp_path, f"quantize={method}", "device=cuda", "model.builder.hidden=256", NO_EXPORT)
    assert artifact.metrics["quantize.layers"] > 0 and "benchmark.speedup_p50" in artifact.metrics


SCRAMBLE = ("plugins=[tests.scramble_recipe]", "quantize=none", "quantize.method=scramble")


def test_the_accuracy_gate_accepts_what_stays_within_max_drop(tmp_path):
    artifact, _ = _run(tmp_path, *SCRAMBLE, NO_EXPORT, "accuracy.max_drop=null")
    assert artifact.tags["accepted"] == "true" and "accuracy.max_drop" not in artifact.metrics
    export_dir = tmp_path / "kept"
    artifact, _ = _run(tmp_path, "quantize=none", "accuracy.max_drop=0", "accuracy.enforce=true",
                       f"export.dir={export_dir}")
    assert artifact.tags["accepted"] == "true" and artifact.metrics["accuracy.drop"] == 0
    assert export_dir.joinpath("model.pt2").exists()


def test_a_rejected_recipe_is_tagged_and_warned_about(tmp_path):
    artifact, warnings = _run(tmp_path, *SCRAMBLE, NO_EXPORT, "model.weights=pkg://ptflow.zoo/digits_mlp.safetensors",
                              "model.builder.hidden=1024", "model.builder.depth=3")
    assert artifact.tags["accepted"] == "false" and artifact.metrics["accuracy.drop"] > 0.5
    assert "more than accuracy.max_drop=0.01 (absolute): tagged accepted=false" in warnings["accuracy"]


def test_a_rejected_recipe_records_its_evidence_then_stops_before_export(tmp_path):
    seen = []

    class Hook:
        def after_stage(self, record, art):
            seen.append((record.name, dict(art.tags), dict(art.metrics)))

    export_dir = tmp_path / "gate-export"
    with pytest.raises(StageError) as caught:
        _run(tmp_path, *SCRAMBLE, "model.weights=pkg://ptflow.zoo/digits_mlp.safetensors",
             "model.builder.hidden=1024", "model.builder.depth=3", "accuracy.max_drop=0.2",
             "accuracy.mode=relative", "accuracy.enforce=true", f"export.dir={export_dir}", hooks=[Hook()])
    assert isinstance(caught.value.cause, Rejected) and caught.value.stage == "benchmark"
    message = str(caught.value)
    assert re.search(r"top1_accuracy went from 0\.99\d\d \(baseline\) to 0\.\d{4}: a drop of \d+\.\d\d% of the "
                     "baseline", message)
    assert "more than accuracy.max_drop=0.2 (relative)" in message and "nothing is exported" in message
    name, tags, metrics = seen[-1]
    assert name == "benchmark" and tags["accepted"] == "false" and metrics["accuracy.accepted"] == 0
    assert not export_dir.exists()


def test_judge_directions_and_modes():
    from ptflow.decide.accuracy import AccuracyConfig, DropMode, judge

    absolute = AccuracyConfig(max_drop=0.01)
    assert judge(absolute, "acc", 0.90, 0.895, True).accepted
    assert not judge(absolute, "acc", 0.90, 0.88, True).accepted
    lower = AccuracyConfig(max_drop=0.01, higher_is_better=True)
    assert judge(lower, "loss", 1.0, 1.5, False).accepted          # the config overrides the metric
    relative = AccuracyConfig(max_drop=0.05, mode=DropMode.RELATIVE)
    verdict = judge(relative, "acc", 0.80, 0.78, True)
    assert verdict.drop == pytest.approx(0.025) and verdict.accepted and "2.50%" in verdict.explain()
    assert not judge(relative, "acc", 0.80, float("nan"), True).accepted


def test_accuracy_config_is_checked():
    for override, key in (("accuracy.max_drop=-1", "accuracy.max_drop"),
                          ("accuracy.mode=sideways", "accuracy.mode"),
                          ("accuracy.enforce=true accuracy.max_drop=null", "accuracy.enforce")):
        config, choices = compose(*TINY, *override.split())
        with pytest.raises(ConfigError, match=key):
            compile_plan(config, choices)


def test_mlflow_gets_the_verdict_the_loss_curve_and_the_calibration_data(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.conftest import mlflow_runs, run_cli

    result = run_cli(tmp_path, "quantize=int8_qat", "quantize.qat.steps=4", "quantize.calibration.batches=2",
                     "benchmark=quick", "experiment=latency_only")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    assert run.data.tags["accepted"] in ("true", "false") and "accuracy/drop" in run.data.metrics
    history = MlflowClient(result.tracking_uri).get_metric_history(run.info.run_id, "quantize/qat_loss")
    assert [point.step for point in history] == [0, 1, 2, 3]
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"eval", "calibration"}
    assert "train (QAT): 4 step(s) on batches of 150" in (result.outputs / "runs").rglob("plan.txt").__next__().read_text()
