"""A run that will export with torch.export (pt2, aoti, onnx) traces the unoptimized model right
after validate, with the run's dynamic dims: a dim the model bounds or fixes, or a branch on a
tensor's values, stops the run there — before quantize, compile or benchmark — with torch's
own fix said as the config value to set or the source line to rewrite."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.errors import StageError
from ptflow.core.spec import InputSpec, TensorSpec
from ptflow.stages.export.diagnose import dynamic_dims_override, suggested_fixes
import ptflow.stages.export.stage  # noqa: F401
from tests import toy_models
from tests.conftest import compose, make_context

QUICK = ("model.weights=null", "data.max_batches=1", "tracking=none", "benchmark=quick")
SLOW_STAGES = ("quantize", "compile", "benchmark")


class Stages:
    """A hook: the stages that started."""

    def __init__(self):
        self.started: list[str] = []

    def before_stage(self, planned, artifact):
        self.started.append(planned.name)


def _run(tmp_path: Path, builder: str, *overrides: str):
    config, choices = compose(*QUICK, "quantize=int8_dynamic", "compile=eager", *overrides)
    config["model"]["builder"] = {"_target_": builder}
    plan = compile_plan(config, choices)
    seen = Stages()
    try:
        return engine.run(plan, make_context(tmp_path, plan), [seen]), seen, None
    except StageError as error:
        return None, seen, error


@pytest.mark.slow
def test_a_bounded_dim_is_refused_before_quantize_with_the_dynamic_dims_to_set(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    tokens = {"_target_": "ptflow.inputs.datasources.random_inputs", "rows": 32, "seed": 0,
              "inputs": {"input_ids": {"shape": [24], "dtype": "int64", "high": 100},
                         "attention_mask": {"shape": [24], "dtype": "int64", "high": 2}}}

    def run(dims: str, run_dir: Path):
        composed, choices = compose(*QUICK, "quantize=int8_dynamic", "data=random", f"data.dynamic_dims={dims}")
        composed["model"].update(builder={"_target_": "ptflow.inputs.hf.from_pretrained", "path": str(tmp_path / "bert"),
                                          "auto_class": "AutoModelForSequenceClassification"}, output_key="logits")
        composed["data"].update(source=tokens, batch_size=16)
        plan = compile_plan(composed, choices)
        seen = Stages()
        return plan, seen, lambda: engine.run(plan, make_context(run_dir, plan), [seen])

    plan, seen, go = run("{input_ids: {1: seq}, attention_mask: {1: seq}}", tmp_path / "as-written")   # the docs' example
    with pytest.raises(StageError) as stopped:
        go()
    message = str(stopped.value)
    fix = "data.dynamic_dims={input_ids: {1: {label: seq, max: 32}}, attention_mask: {1: seq}}"
    assert stopped.value.stage == "export" and "right after validate" in message and fix in message
    assert "Dim('seq', max=32)" in message and not set(seen.started) & set(SLOW_STAGES)
    _, _, go = run(fix.removeprefix("data.dynamic_dims="), tmp_path / "fixed")   # the value it says: it exports
    artifact = go()
    assert artifact.metrics["export.trace_check_s"] > 0 and artifact.metrics["export.pt2.fresh_check_s"] > 0


def test_a_dim_the_model_fixes_says_to_drop_it(tmp_path):
    _, seen, error = _run(tmp_path, "tests.toy_models.rows_lstm", "data=digits_rows",
                          "data.dynamic_dims={rows: {1: seq}, mask: {1: seq}}")
    message = str(error)
    assert "fixes dim 'seq' to 8" in message and "drop 'seq' from data.dynamic_dims" in message
    assert seen.started == ["load", "validate"]


def test_a_branch_on_values_names_the_line_and_torch_cond(tmp_path):
    _, seen, error = _run(tmp_path, "tests.toy_models.BranchyNet", "quantize=int8_static", "export.formats=[onnx]")
    line = next(n for n, text in enumerate(inspect.getsource(toy_models).splitlines(), 1) if "# BRANCH" in text)
    message = str(error)
    assert "export.formats=onnx" in message and f"toy_models.py:{line} (`if pixels.sum() > 0:" in message
    assert "torch.cond" in message and seen.started == ["load", "validate"]


def test_formats_without_torch_export_are_not_traced_and_the_plan_says_when(tmp_path):
    artifact, _, error = _run(tmp_path, "tests.toy_models.BranchyNet", "quantize=none", "export.formats=[safetensors]")
    assert error is None and "export.trace_check_s" not in artifact.metrics
    config, choices = compose(*QUICK)
    notes = [n.text for p in compile_plan(config, choices).stages if p.name == "export" for n in p.notes]
    assert any("checked right after validate" in n and "pt2" in n for n in notes)


def test_torchs_suggested_fixes_are_read_and_rewritten_as_an_override():
    text = ("Constraints violated (seq)!\n  - Not all values ...\nSuggested fixes:\n  seq = Dim('seq', max=128)\n"
            "  width = 24\n\nThe error above occurred ...")
    assert suggested_fixes(text) == {"seq": "Dim('seq', max=128)", "width": "24"}
    spec = InputSpec((TensorSpec("ids", ("batch", "seq"), "int64"), TensorSpec("mask", ("batch", "seq"), "int64")),
                     keyword=True, ranges=(("seq", 2, None),))
    assert dynamic_dims_override(spec, {"seq": {"max": 128}}) == \
        "data.dynamic_dims={ids: {1: {label: seq, min: 2, max: 128}}, mask: {1: seq}}"


@pytest.mark.parametrize("overrides, names", [
    (("compile=inductor", "compile.fullgraph=true"), "compile=inductor compile.fullgraph=true: the model has 1 graph break"),
    (("compile=aoti",), "compile=aoti: torch.export cannot trace the model"),
])
def test_a_compile_that_needs_one_graph_is_checked_after_validate_too(tmp_path, overrides, names):
    _, seen, error = _run(tmp_path, "tests.toy_models.BranchyNet", "quantize=int8_static", "export.formats=[safetensors]",
                          *overrides)
    message = str(error)
    assert error.stage == "compile" and names in message and "toy_models.py:" in message and "torch.cond" in message
    assert seen.started == ["load", "validate"]
