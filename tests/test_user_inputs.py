"""Any user's model and data: modules in the working directory, TorchScript archives, .pt2
programs, Hugging Face directories, random inputs, tensor files, Datasets and DataLoaders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy
import pytest
import torch
from torch import nn

from ptflow import engine
from ptflow.artifact import Form
from ptflow.data import Split, as_split
from ptflow.datasources import random_inputs, tensor_file
from ptflow.errors import ConfigError, InputError
from ptflow.plan import compile_plan
from ptflow.stage import RunContext
from ptflow.targets import check_target
from ptflow.weights import ModelFormat, sniff
from tests.conftest import compose

QUICK = ("tracking=none", "benchmark=quick", "quantize=none")
PIXELS = {"_target_": "ptflow.datasources.random_inputs", "rows": 40, "seed": 0,
          "inputs": {"pixels": {"shape": [8], "dtype": "float32"}}}


class Tiny(nn.Module):
    """8 features -> 3 class scores, named like the digits MLP's input."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def _config(*overrides: str, model: dict | None = None, data: dict | None = None):
    config, choices = compose(*QUICK, *overrides)
    config["model"].update(model or {})
    config["data"].update({"source": PIXELS, "calibration": None, "metric": None, "batch_size": 16,
                           **(data or {})})
    return config, choices


def _problems(config, choices=None):
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    return caught.value.problems


def _run(tmp_path: Path, config, choices):
    plan = compile_plan(config, choices)
    heard: dict[str, str] = {}
    ctx = RunContext(tmp_path, "cpu", 0, "0" * 64, {}, engine.progress,
                     warn=lambda key, message: heard.setdefault(key, message))
    return engine.run(plan, ctx), heard


def _scripted(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    return path


def _program(tmp_path: Path) -> Path:
    model = Tiny().eval()
    example = torch.randn(4, 8)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    return path


# --- the working directory is importable ---------------------------------------------------

USER_MODULE = '''
import torch
from torch import nn
from ptflow.data import Split

class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.layer = nn.Linear(4, width)

    def forward(self, x):
        return self.layer(x)

def rows(count: int = 32):
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randn(count, 4, generator=generator), None)
'''

USER_STAGES = '''
from dataclasses import dataclass
from ptflow.artifact import RUNNABLE
from ptflow.stage import register_stage

@dataclass(frozen=True)
class MarkConfig:
    value: int = 7

@register_stage("mark", config=MarkConfig)
class MarkStage:
    """A user's own stage."""
    requires = frozenset()
    provides = frozenset()
    def __init__(self, config): self.config = config
    def consumes(self): return RUNNABLE
    def produces(self, given): return given
    def preflight(self, env): return []
    def run(self, artifact, ctx): return artifact.with_metrics({"mark.value": float(self.config.value)})
'''


def _user_project(root: Path) -> None:
    (root / "mymodels.py").write_text(USER_MODULE)
    (root / "my_stages.py").write_text(USER_STAGES)
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "data").mkdir()
    (root / "conf" / "model" / "mine.yaml").write_text(textwrap.dedent('''\
        # ptflow model=mine
        builder: {_target_: mymodels.Net, width: 8}
        weights: null
        format: auto
        strict: true
        state_dict_key: null
        trust_pickle: false
        output_key: null
    '''))
    (root / "conf" / "data" / "mine.yaml").write_text(textwrap.dedent('''\
        # ptflow data=mine
        source: {_target_: mymodels.rows, count: 32}
        calibration: null
        batch_size: 16
        max_batches: null
        metric: null
        dynamic_batch: true
    '''))


def _ptflow(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed `ptflow` script, as a user runs it: unlike `python -m ptflow`, Python
    itself puts no working directory on sys.path."""
    script = Path(sys.executable).parent / "ptflow"
    if not script.exists():
        pytest.skip(f"no installed ptflow script beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env, "PYTHONUNBUFFERED": "1"})


def _user_args(root: Path) -> list[str]:
    return [f"hydra.searchpath=[file://{root / 'conf'}]", "model=mine", "data=mine", "plugins=[my_stages]",
            "pipeline=[load,validate,benchmark,mark]", "tracking=none", "benchmark=quick"]


def test_modules_in_the_working_directory_import_without_pythonpath(tmp_path):
    _user_project(tmp_path)
    result = _ptflow(tmp_path, *_user_args(tmp_path))
    assert result.returncode == 0, result.stderr
    (record,) = tmp_path.glob("outputs/runs/*/*/ptflow_result.json")
    assert json.loads(record.read_text())["metrics"]["mark.value"] == 7.0


def test_a_module_nowhere_to_be_found_says_where_ptflow_looked(tmp_path):
    _user_project(tmp_path)
    result = _ptflow(tmp_path, *_user_args(tmp_path), "model.builder._target_=mymodel.Net")
    assert result.returncode == 2
    assert "model.builder._target_" in result.stderr and f"a module in {tmp_path}" in result.stderr


@pytest.mark.slow
def test_joblib_workers_import_the_users_modules(tmp_path):
    _user_project(tmp_path)
    result = _ptflow(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
                     *_user_args(tmp_path))
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/multirun/*/*/*/ptflow_result.json")]
    assert [r["status"] for r in records] == ["FINISHED", "FINISHED"]


def test_a_module_hiding_an_installed_one_is_named(tmp_path):
    from ptflow.cli import _shadowed_by

    (tmp_path / "json.py").write_text("")
    (tmp_path / "mymodels.py").write_text("")
    lines = _shadowed_by(str(tmp_path))
    assert len(lines) == 1 and "./json.py hides the installed module 'json'" in lines[0]


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
    """torch.export.load needs the output dataclass registered: ptflow imports and registers
    it from the name the program records."""
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
    config, choices = _config("pipeline=[load,validate]", model={"builder": None,
                                                                  "weights": str(tmp_path / "scores.pt2")})
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


HF_BUILDER = {"_target_": "ptflow.hf.from_pretrained", "auto_class": "AutoModelForSequenceClassification"}
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


# --- data: random inputs, tensor files, Datasets, DataLoaders -------------------------------

def test_random_data_with_a_task_metric_is_refused_before_the_run():
    config, choices = _config(data={"metric": "top1_accuracy"})
    (problem,) = _problems(config, choices)
    assert problem.key == "data.metric" and "random data has no targets" in problem.hint
    assert "set data.metric=null" in problem.hint


def test_random_input_specs_are_checked_before_the_run():
    spec = {**PIXELS, "inputs": {"ids": {"shape": [4], "dtype": "int64"}, "x": {"shape": [4], "dtype": "flaot32"}}}
    rendered = [p.render() for p in check_target(spec, "data.source")]
    assert any(r.startswith("data.source.inputs.ids.high") for r in rendered)
    assert any("data.source.inputs.x.dtype" in r and "did you mean 'float32'" in r for r in rendered)


def test_random_inputs_are_reproducible_and_positional_from_a_list():
    a = random_inputs([{"shape": [2, 3]}, {"shape": [5], "dtype": "int64", "high": 9}], rows=4, seed=1)
    b = random_inputs([{"shape": [2, 3]}, {"shape": [5], "dtype": "int64", "high": 9}], rows=4, seed=1)
    assert isinstance(a.inputs, tuple) and a.targets is None
    assert a.inputs[0].shape == (4, 2, 3) and a.inputs[1].dtype == torch.int64 and int(a.inputs[1].max()) < 9
    assert all(torch.equal(x, y) for x, y in zip(a.inputs, b.inputs))


def test_tensor_files_give_inputs_and_targets(tmp_path):
    x, y = numpy.random.default_rng(0).random((10, 8)), numpy.arange(10) % 3
    numpy.savez(tmp_path / "data.npz", x=x, y=y)
    split = tensor_file(str(tmp_path / "data.npz"), inputs={"pixels": "x"}, targets="y")
    assert split.inputs["pixels"].dtype == torch.float32 and torch.equal(split.targets, torch.arange(10) % 3)
    torch.save({"a": torch.ones(3, 2), "b": torch.zeros(3, 1), "y": torch.arange(3)}, tmp_path / "data.pt")
    split = tensor_file(str(tmp_path / "data.pt"), inputs=["a", "b"])
    assert isinstance(split.inputs, tuple) and split.targets is None


def test_a_missing_key_of_a_tensor_file_lists_the_keys(tmp_path):
    numpy.savez(tmp_path / "data.npz", x=numpy.zeros((4, 8)), label=numpy.zeros(4))
    node = {"_target_": "ptflow.datasources.tensor_file", "path": str(tmp_path / "data.npz"),
            "inputs": "x", "targets": "labels"}
    (problem,) = check_target(node, "data.source")
    assert problem.key == "data.source.targets" and "x, label" in problem.expected
    assert "did you mean 'label'?" in problem.hint
    with pytest.raises(InputError, match=r"'labels' is not a key of .*data.npz; its keys: x, label"):
        tensor_file(str(tmp_path / "data.npz"), inputs="x", targets="labels")


def test_a_tensor_file_run_reaches_the_metric(tmp_path):
    torch.manual_seed(0)
    torch.save({"x": torch.randn(32, 8), "y": torch.randint(0, 3, (32,))}, tmp_path / "rows.pt")
    config, choices = _config("pipeline=[load,validate]", model={"builder": {"_target_": "tests.test_user_inputs.Tiny"},
                                                               "weights": None},
                              data={"metric": "top1_accuracy", "source": {
                                  "_target_": "ptflow.datasources.tensor_file", "path": str(tmp_path / "rows.pt"),
                                  "inputs": {"pixels": "x"}, "targets": "y"}})
    artifact, _ = _run(tmp_path, config, choices)
    assert 0.0 <= artifact.metrics["validate.top1_accuracy"] <= 1.0


class Pairs(torch.utils.data.Dataset):
    def __init__(self, rows=10, item=None):
        self.rows, self.item = rows, item

    def __len__(self):
        return self.rows

    def __getitem__(self, index):
        if self.item is not None:
            return self.item(index)
        return torch.full((8,), float(index)), index % 3


def test_a_dataset_is_stacked_and_a_dataloader_joined():
    split = as_split(Pairs())
    assert split.inputs.shape == (10, 8) and split.targets.tolist() == [i % 3 for i in range(10)]
    joined = as_split(torch.utils.data.DataLoader(Pairs(), batch_size=4), limit=6)
    assert joined.inputs.shape == (6, 8) and torch.equal(joined.inputs, split.inputs[:6])
    named = as_split(Pairs(item=lambda i: {"input_ids": torch.arange(5), "labels": 1}))
    assert set(named.inputs) == {"input_ids"} and named.targets.shape == (10,)


@pytest.mark.parametrize("item, says", [
    (lambda i: (torch.zeros(8), "cat"), "the target is a str ('cat')"),
    (lambda i: (torch.zeros(8 + i % 2), 0), "item 1: the input has shape (9,) but item 0's has (8,)"),
    (lambda i: (torch.zeros(8), 0, 1), "item 0 has 3 parts"),
], ids=["string-label", "ragged", "triple"])
def test_items_that_cannot_be_collated_are_named(item, says):
    with pytest.raises(InputError) as caught:
        as_split(Pairs(item=item), key="data.source")
    assert str(caught.value).startswith("data.source") and says in str(caught.value)


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
                              model={"builder": {"_target_": "tests.test_user_inputs.WithLabels"}, "weights": None},
                              data={"source": {"_target_": "tests.test_user_inputs.labelled_inputs"}})
    with pytest.raises(Exception) as caught:
        _run(tmp_path, config, choices)
    message = str(caught.value)
    assert "output.loss is a 0-dim tensor" in message and "labels" in message
    assert "model.output_key=logits" in message
    config["model"]["output_key"] = "logits"
    artifact, _ = _run(tmp_path, config, choices)
    assert artifact.baseline.task_output[0].shape == (16, 3)
