"""The engine in-process: stages in order with hooks; failures named, nothing lost.

Uses a keyword-input model with a dataclass output (Hugging Face's calling convention).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.artifact import RUNNABLE, Form
from ptflow.core.errors import StageError
from ptflow.core.stage import register_stage
from tests.conftest import compose, make_context

TOY = ("model.weights=null", "data.batch_size=16", "benchmark=quick", "tracking=none",
       "model.output_key=logits")


def _toy_config(*overrides):
    """The default config with the toy model and data swapped in (as a model/*.yaml would)."""
    config, choices = compose(*TOY, *overrides)
    config["model"]["builder"] = {"_target_": "tests.toy_models.KeywordNet"}
    config["data"]["source"] = {"_target_": "tests.toy_models.keyword_split"}
    return config, choices


class Recorder:
    def __init__(self):
        self.events = []

    def before_run(self, plan, ctx):
        self.events.append("before_run")

    def before_stage(self, planned, artifact):
        self.events.append(f"before:{planned.name}")

    def after_stage(self, record, artifact):
        self.events.append(f"after:{record.name}")

    def on_error(self, error, artifact):
        self.events.append(f"error:{error.stage}")

    def after_run(self, artifact, error):
        self.events.append(f"after_run:{type(error).__name__ if error else 'ok'}")


def _run(tmp_path, *overrides, hooks=()):
    config, choices = _toy_config(*overrides)
    plan = compile_plan(config, choices)
    return engine.run(plan, make_context(tmp_path, plan), hooks)


def test_keyword_inputs_and_dataclass_outputs_go_through_every_stage(tmp_path):
    recorder = Recorder()
    artifact = _run(tmp_path, hooks=[recorder])
    stages = ["load", "validate", "quantize", "compile", "benchmark", "export"]
    assert recorder.events == ["before_run"] + [f"{e}:{s}" for s in stages for e in ("before", "after")] \
        + ["after_run:ok"]
    assert [r.name for r in artifact.lineage] == stages and artifact.form is Form.EXPORTED
    assert artifact.inputs.keyword and [t.name for t in artifact.inputs.tensors] == ["features", "mask"]
    assert [p for p, _ in artifact.baseline.outputs[0]] == ["output.logits", "output.hidden"]
    assert artifact.metrics["load.batches"] == 3                     # 40 rows: 16, 16, 8
    assert artifact.metrics["export.reload_max_abs_error"] <= 1e-4
    manifest = json.loads(artifact.files["export.manifest"].read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["features", "mask"]
    reloaded = torch.export.load(artifact.files["export.pt2"]).module()
    out = reloaded(features=torch.randn(5, 8), mask=torch.ones(5, 8))   # a new batch size
    assert out.logits.shape == (5, 3)


@dataclass(frozen=True)
class ExplodeConfig:
    message: str = "boom"


@register_stage("explode_for_test", config=ExplodeConfig)
class ExplodeStage:
    """Fails on purpose, after writing a file, to test failure handling."""

    requires = frozenset()
    provides = frozenset()

    def __init__(self, config):
        self.config = config

    def consumes(self):
        return RUNNABLE

    def produces(self, given):
        return given

    def preflight(self, env):
        return []

    def run(self, artifact, ctx):
        ctx.path("explode", "partial.txt").write_text("written before the failure")
        raise RuntimeError(self.config.message)


def test_a_failing_stage_is_named_and_earlier_outputs_stay(tmp_path):
    recorder = Recorder()
    with pytest.raises(StageError, match="stage 'explode_for_test' failed: RuntimeError: boom") as caught:
        _run(tmp_path, "pipeline=[load,validate,benchmark,explode_for_test]", hooks=[recorder])
    assert caught.value.stage == "explode_for_test"
    assert recorder.events[-2:] == ["error:explode_for_test", "after_run:StageError"]
    assert (tmp_path / "benchmark" / "latency_samples.json").is_file()
    assert (tmp_path / "explode" / "partial.txt").is_file()


def test_a_stage_that_breaks_its_declared_form_is_caught(tmp_path, monkeypatch):
    from ptflow.stages.quantize.stage import QuantizeStage

    monkeypatch.setattr(QuantizeStage, "run", lambda self, artifact, ctx: artifact)  # forgets to quantize
    with pytest.raises(StageError, match="produced a eager model; the stage declared quantized"):
        _run(tmp_path, "pipeline=[load,validate,quantize]")


def test_a_failed_export_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from ptflow.core.errors import InputError
    from ptflow.stages.export import stage as export

    out = tmp_path / "exports"
    _run(tmp_path / "first", f"export.dir={out}", "pipeline=[load,validate,export]")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.pt2", "model.example.safetensors", "manifest.json"}

    def unfaithful(*args, **kwargs):
        raise InputError("the reloaded file differs")

    monkeypatch.setattr(export, "_max_abs_error", unfaithful)
    with pytest.raises(StageError, match="reloaded file differs"):
        _run(tmp_path / "second", f"export.dir={out}", "pipeline=[load,validate,export]")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before        # the earlier complete export is untouched; no partial files


def test_preflight_catches_a_broken_target_before_anything_runs():
    from ptflow.core.errors import ConfigError

    config, _ = _toy_config()
    config["data"]["source"]["_target_"] = "tests.toy_models.keyword_splitt"
    with pytest.raises(ConfigError, match="did you mean 'keyword_split'"):
        compile_plan(config)
