"""Users' models: TorchScript archives, .pt2 programs, Hugging Face directories, and a
loss returned where the task output should be."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from ptflow.app.settings import compile_plan
from ptflow.core.artifact import Form
from ptflow.core.targets import check_target
from ptflow.inputs.data import Split
from ptflow.inputs.weights import ModelFormat, sniff
from tests.user_inputs import PIXELS, Tiny, _config, _problems, _program, _run, _scripted


# --- TorchScript archives and .pt2 programs -------------------------------------------------

def test_files_are_recognised_by_their_zip_directory(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "state.pt")
    assert sniff(tmp_path / "state.pt") is ModelFormat.STATE_DICT
    assert sniff(_scripted(tmp_path)) is ModelFormat.TORCHSCRIPT
    assert sniff(_program(tmp_path)) is ModelFormat.PT2


def test_a_torchscript_archive_is_the_baseline_and_runs_to_benchmark(tmp_path):
    config, choices = _config("pipeline=[load,validate,compile,benchmark]",
                              model={"builder": None, "weights": str(_scripted(tmp_path))})
    plan = compile_plan(config, choices)
    assert [s.form_out for s in plan.stages] == [Form.SCRIPTED] * 4
    assert "TorchScript archive" in plan.render()
    artifact, _ = _run(tmp_path, config, choices)
    assert artifact.form is Form.SCRIPTED and [t.name for t in artifact.inputs.tensors] == ["pixels"]
    assert artifact.metrics["benchmark.max_abs_error"] == 0.0


@pytest.mark.parametrize("overrides, refused, why", [
    (("compile=inductor", "pipeline=[load,validate,compile,benchmark]"), "compile", "cannot compile a TorchScript"),
    (("pipeline=[load,validate,benchmark,export]",), "export", "cannot trace a TorchScript module"),
], ids=["inductor", "export"])
def test_the_plan_refuses_stages_a_torchscript_model_cannot_go_through(tmp_path, overrides, refused, why):
    config, choices = _config(*overrides, model={"builder": None, "weights": str(_scripted(tmp_path))})
    (problem,) = _problems(config, choices)
    assert problem.found == refused and problem.key.startswith("pipeline[")
    assert "'load' hands on the model as 'scripted'" in problem.hint and why in problem.hint


def test_keyword_inputs_named_unlike_forward_are_caught_at_load(tmp_path):
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(nn.Sequential(nn.Linear(8, 3)).eval(), torch.randn(2, 8)), str(path))
    config, choices = _config("pipeline=[load,validate]", model={"builder": None, "weights": str(path)})
    with pytest.raises(Exception, match=r"keyword input\(s\) pixels, which Sequential.forward\(\) does not "
                                        r"take; it takes \(input\)"):
        _run(tmp_path, config, choices)
    config["data"]["source"] = {**PIXELS, "inputs": [{"shape": [8]}]}   # a list: positional
    artifact, _ = _run(tmp_path, config, choices)
    assert artifact.form is Form.SCRIPTED


def test_a_builder_beside_a_torchscript_archive_is_caught(tmp_path):
    config, choices = _config("pipeline=[load,validate]", model={"weights": str(_scripted(tmp_path))})
    (problem,) = _problems(config, choices)
    assert problem.key == "model.builder" and "set model.builder=null" in problem.hint


def test_a_format_the_file_does_not_have_is_caught(tmp_path):
    config, choices = _config(model={"builder": None, "weights": str(_scripted(tmp_path)), "format": "pt2"})
    (problem,) = _problems(config, choices)
    assert problem.key == "model.format" and "set model.format=torchscript or auto" in problem.hint


def test_a_pt2_program_is_called_as_exported_and_exports_again(tmp_path):
    """The program was exported with a positional input; the data names it (keyword): ptflow
    passes it positionally. The exported model goes through export again."""
    config, choices = _config("pipeline=[load,validate,compile,benchmark,export]",
                              model={"builder": None, "weights": str(_program(tmp_path))})
    plan = compile_plan(config, choices)
    assert plan.stages[0].form_out is Form.EXPORTED
    artifact, _ = _run(tmp_path, config, choices)
    assert artifact.batches[0].inputs.args and not artifact.batches[0].inputs.kwargs
    assert artifact.metrics["export.reload_max_abs_error"] == 0.0
    assert (tmp_path / "export" / "model.pt2").exists()


def test_a_pt2_program_names_the_inputs_the_data_lacks(tmp_path):
    config, choices = _config("pipeline=[load,validate]", model={"builder": None, "weights": str(_program(tmp_path))},
                              data={"source": {**PIXELS, "inputs": {"features": {"shape": [8]}}}})
    with pytest.raises(Exception, match=r"takes \(pixels\); data.source gives features"):
        _run(tmp_path, config, choices)


OUTPUT_MODULE = '''
from dataclasses import dataclass
import torch
from torch import nn

@dataclass
class Scores:
    logits: torch.Tensor

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 3)

    def forward(self, pixels):
        return Scores(self.layer(pixels))
'''


def test_a_pt2_program_with_dataclass_outputs_loads_in_a_fresh_process(tmp_path, monkeypatch):
    """torch.export.load needs the output dataclass registered: ptflow registers it from the name
    the program records, once its module is imported — by plugins, never on the file's say-so."""
    (tmp_path / "scores_out.py").write_text(OUTPUT_MODULE)
    script = textwrap.dedent(f'''
        import torch, scores_out
        torch.export.register_dataclass(scores_out.Scores, serialized_type_name="scores_out.Scores")
        program = torch.export.export(scores_out.Net().eval(), (torch.randn(4, 8),),
                                      dynamic_shapes=({{0: torch.export.Dim("batch")}},))
        torch.export.save(program, {str(tmp_path / "scores.pt2")!r})
    ''')
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    config, choices = _config("pipeline=[load,validate]", "plugins=[scores_out]",
                              model={"builder": None, "weights": str(tmp_path / "scores.pt2")})
    artifact, _ = _run(tmp_path, config, choices)
    assert [p for p, _ in artifact.baseline.outputs[0]] == ["output.logits"]
    sys.modules.pop("scores_out", None)


# --- Hugging Face models from a local directory ---------------------------------------------

def _tiny_bert(directory: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    return directory


HF_BUILDER = {"_target_": "ptflow.inputs.hf.from_pretrained", "auto_class": "AutoModelForSequenceClassification"}
TOKENS = {**PIXELS, "inputs": {"input_ids": {"shape": [12], "dtype": "int64", "high": 100}}}


def test_a_saved_hugging_face_model_runs_through_export(tmp_path):
    path = _tiny_bert(tmp_path / "bert")
    config, choices = _config(model={"builder": {**HF_BUILDER, "path": str(path)}, "weights": None},
                              data={"source": TOKENS})
    artifact, heard = _run(tmp_path, config, choices)
    assert "load.weights" not in heard            # the builder loads the weights itself
    assert "data.synthetic" in heard and "latency" in heard["data.synthetic"]
    assert [p for p, _ in artifact.baseline.outputs[0]] == ["output.logits"]
    assert artifact.form is Form.EXPORTED and artifact.metrics["export.reload_max_abs_error"] < 1e-4
    assert os.environ.get("HF_HUB_OFFLINE") is None   # set only while loading
    # its output class is a pytree node transformers registers: a fresh process imports it first
    (entry,) = json.loads((tmp_path / "export" / "manifest.json").read_text())["files"]
    assert entry["requires"] == ["transformers.modeling_outputs"] and "transformers" in entry["versions"]
    assert artifact.metrics["export.pt2.fresh_check_s"] > 0


def test_a_hugging_face_directory_without_config_json_is_named(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "empty").mkdir()
    (problem,) = check_target({**HF_BUILDER, "path": str(tmp_path / "empty")}, "model.builder")
    assert problem.key == "model.builder.path" and "no config.json in" in problem.hint


def test_a_missing_transformers_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    (problem,) = check_target({**HF_BUILDER, "path": str(tmp_path)}, "model.builder")
    assert problem.key == "model.builder._target_" and "pip install 'ptflow[hf]'" in problem.hint




# --- a loss where the task output should be -------------------------------------------------

@dataclass
class LossFirst:
    loss: torch.Tensor
    logits: torch.Tensor


class WithLabels(nn.Module):
    """Like a Hugging Face model given labels: returns (loss, logits)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, pixels, labels):
        logits = self.head(pixels)
        return LossFirst(nn.functional.cross_entropy(logits, labels), logits)


def labelled_inputs(rows: int = 16) -> Split:
    return Split({"pixels": torch.randn(rows, 8), "labels": torch.randint(0, 3, (rows,))}, None)


def test_a_loss_returned_first_points_at_output_key(tmp_path):
    config, choices = _config("pipeline=[load,validate]",
                              model={"builder": {"_target_": "tests.inputs.test_user_models.WithLabels"}, "weights": None},
                              data={"source": {"_target_": "tests.inputs.test_user_models.labelled_inputs"}})
    with pytest.raises(Exception) as caught:
        _run(tmp_path, config, choices)
    message = str(caught.value)
    assert "output.loss is a 0-dim tensor" in message and "labels" in message
    assert "model.output_key=logits" in message
    config["model"]["output_key"] = "logits"
    artifact, _ = _run(tmp_path, config, choices)
    assert artifact.baseline.task_output[0].shape == (16, 3)
