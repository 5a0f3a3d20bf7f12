"""No code runs from a model or data file unless the user opts in: one crafted file per way in.

Every crafted file (tests/crafted_files.py) creates a marker file when it runs, and is
otherwise valid. Each case checks that the pre-flight names the file, the entry and the
opt-in, that loading (as if the pre-flight had been skipped) refuses too, and that the
marker never appears. The opt-in is real: with model.trust_pickle=true the same file loads,
and runs its payload (which is what trusting a file means).
"""
from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from ptflow.core.errors import InputError
from ptflow.core.stage import Environment
from ptflow.inputs.archive_audit import checkpoint_problem, expression_problem, pickle_globals, pt2_problems
from ptflow.stages.load import DataConfig, LoadConfig, LoadStage, ModelConfig, load_model
from tests import crafted_files as crafted

SOURCE = {"_target_": "ptflow.inputs.datasources.random_inputs", "rows": 8, "inputs": {"x": {"shape": [64]}}}
MARKER = "MARKER"

PT2_CASES = [  # (id, maker, the entry the message names)
    ("pt2-sample-inputs", crafted.pt2_pickled_sample_inputs, "data/sample_inputs/model.pt"),
    ("pt2-use-pickle-weight", crafted.pt2_pickled_weight, "data/weights/weight_"),
    ("pt2-sympy-expression", crafted.pt2_sympy_expression, "models/model.json"),
]


def _config(path: Path, builder: dict | None = None, **model) -> LoadConfig:
    return LoadConfig(ModelConfig(builder=builder, weights=str(path), **model), DataConfig(source=SOURCE))


def _preflight(config: LoadConfig) -> list:
    return [p for p in LoadStage(config).preflight(Environment("cpu")) if p.key.startswith("model.")]


@pytest.mark.parametrize(("maker", "entry"), [c[1:] for c in PT2_CASES], ids=[c[0] for c in PT2_CASES])
def test_a_crafted_pt2_is_refused_before_and_at_load_and_runs_nothing(tmp_path, maker, entry):
    marker = tmp_path / MARKER
    path = maker(tmp_path / "model.pt2", marker)
    (problem,) = _preflight(_config(path))
    assert problem.key == "model.weights" and entry in problem.hint and str(path) in problem.hint
    assert "model.trust_pickle=true" in problem.hint
    with pytest.raises(InputError) as caught:   # the pre-flight skipped, or the file swapped after it
        load_model(_config(path).model)
    assert entry in str(caught.value) and str(caught.value).startswith("model.weights: ")
    assert not marker.exists()


def test_trust_pickle_is_the_opt_in_and_really_loads_the_file(tmp_path, monkeypatch):
    # torch logs the weights-only fallback with a malformed format string, which pytest's log capture raises on
    monkeypatch.setattr(logging.getLogger("torch._export.serde.serialize"), "disabled", True)
    marker = tmp_path / MARKER
    path = crafted.pt2_pickled_sample_inputs(tmp_path / "model.pt2", marker)
    config = _config(path, trust_pickle=True)
    assert _preflight(config) == []
    loaded = load_model(config.model)
    assert loaded.module(torch.randn(2, 64)).shape == (2, 10)
    assert marker.exists()   # trusting a file means running what it holds


def test_a_pt2_carrying_a_compiled_library_is_refused(tmp_path):
    path = crafted.pt2_with_aoti_library(tmp_path / "model.pt2")
    (problem,) = _preflight(_config(path))
    assert "data/aotinductor/model/model.so" in problem.hint and "native code" in problem.hint


def test_genuine_programs_pass_the_audit_and_load(tmp_path):
    plain = crafted.exported(tmp_path / "plain.pt2")
    assert _preflight(_config(plain)) == []
    assert load_model(_config(plain).model).module(torch.randn(3, 64)).shape == (3, 10)
    # torchao's quantized weights are pickled tensor subclasses that torchao registers as safe
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = crafted.Tiny().eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    torch.export.save(torch.export.export(model, (torch.randn(4, 64),)), tmp_path / "int8.pt2")
    with zipfile.ZipFile(tmp_path / "int8.pt2") as archive:
        assert pt2_problems(archive) == []


def test_a_state_dict_that_unpickles_code_is_refused_in_preflight(tmp_path):
    marker = tmp_path / MARKER
    path = crafted.state_dict_with_payload(tmp_path / "weights.pt", marker)
    builder = {"_target_": "tests.crafted_files.Tiny"}
    (problem,) = _preflight(_config(path, builder))
    assert "data.pkl" in problem.hint and "eval" in problem.hint and "model.trust_pickle=true" in problem.hint
    with pytest.raises(InputError, match="pickled Python objects"):
        load_model(_config(path, builder).model)
    assert not marker.exists()


def test_a_torchscript_archive_cannot_carry_python_code(tmp_path):
    """TorchScript archives are read by TorchScript's own unpickler, which knows no Python
    callables: a data.pkl naming builtins.eval fails to load, and runs nothing."""
    marker = tmp_path / MARKER
    path = crafted.torchscript_with_payload(tmp_path / "scripted.pt", marker)
    with pytest.raises(InputError, match="TorchScript"):
        load_model(_config(path).model)
    assert not marker.exists()


def test_a_tensor_data_file_that_unpickles_code_is_refused(tmp_path):
    from ptflow.core.targets import check_target

    marker = tmp_path / MARKER
    (tmp_path / "data.pt").write_bytes(crafted.payload_bytes(marker, "{'x': __import__('torch').zeros(4, 64)}"))
    node = {"_target_": "ptflow.inputs.datasources.tensor_file", "path": str(tmp_path / "data.pt"), "inputs": "x"}
    (problem,) = check_target(node, "data.source")
    assert problem.key == "data.source.path" and "eval" in problem.hint
    assert not marker.exists()


def test_an_output_type_module_is_not_imported_because_a_file_names_it(tmp_path, monkeypatch):
    """A .pt2 names the module of its output dataclass; importing a module runs it, so only
    modules already imported (a builder's, plugins) or transformers are imported for it."""
    module = textwrap.dedent(f'''
        from dataclasses import dataclass
        import torch
        open({str(tmp_path / MARKER)!r}, "w").close()   # importing this module is the payload

        @dataclass
        class Out:
            logits: torch.Tensor

        class Net(torch.nn.Module):
            def forward(self, x):
                return Out(x * 2)
    ''')
    (tmp_path / "sneaky_out.py").write_text(module)
    script = ("import torch, sneaky_out\n"
              "torch.export.register_dataclass(sneaky_out.Out, serialized_type_name='sneaky_out.Out')\n"
              "torch.export.save(torch.export.export(sneaky_out.Net(), (torch.randn(2, 64),)), 'out.pt2')\n")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / MARKER).unlink()
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match=r"plugins=\[sneaky_out\]"):
        load_model(_config(tmp_path / "out.pt2").model)
    assert not (tmp_path / MARKER).exists() and "sneaky_out" not in sys.modules


def test_a_hugging_face_dir_with_pickled_code_weights_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ptflow.core.targets import check_target

    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16, num_labels=2)
    directory = tmp_path / "bert"
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(directory)
    for saved in directory.glob("*.safetensors"):   # transformers 5 writes only safetensors: make it a .bin dir
        saved.unlink()
    torch.save(model.state_dict(), tmp_path / "real.bin")
    marker = tmp_path / MARKER
    state = "__import__('torch').load(" + repr(str(tmp_path / "real.bin")) + ", weights_only=True)"
    (directory / "pytorch_model.bin").write_bytes(crafted.payload_bytes(marker, state))
    node = {"_target_": "ptflow.inputs.hf.from_pretrained", "path": str(directory),
            "auto_class": "AutoModelForSequenceClassification"}
    (problem,) = check_target(node, "model.builder")
    assert "pytorch_model.bin" in problem.hint and "save_pretrained" in problem.hint
    from ptflow.inputs.hf import from_pretrained

    with pytest.raises(InputError, match="would run code"):
        from_pretrained(str(directory), "AutoModelForSequenceClassification")
    assert not marker.exists()


def test_a_hugging_face_dir_with_remote_code_never_imports_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ptflow.inputs.hf import from_pretrained

    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16, num_labels=2)
    directory = tmp_path / "bert"
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    import json

    saved = json.loads((directory / "config.json").read_text())
    saved["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (directory / "config.json").write_text(json.dumps(saved))
    (directory / "modeling_evil.py").write_text(f"open({str(tmp_path / MARKER)!r}, 'w').close()\n")
    try:
        model = from_pretrained(str(directory), "AutoModelForSequenceClassification")
        assert type(model).__name__ == "BertForSequenceClassification"
    except InputError as error:   # a transformers that refuses auto_map without trust_remote_code
        assert "trust_remote_code" in str(error)
    assert not (tmp_path / MARKER).exists()


# --- the audit's parts ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["Symbol('s77', positive=True, integer=True)", "FloorDiv(s0, 2) + 1",
                                  "Mul(Float('2.5', precision=53), ToFloat(s17))", "Max(1, s0*s1) <= 4096"])
def test_shape_expressions_torch_writes_pass(text):
    assert expression_problem(text) is None


@pytest.mark.parametrize("text", ["Symbol.__new__.__globals__['__builtins__']", "Symbol('s0').__class__",
                                  "exec('1')", "Symbol('os')", "s0 + lambdify(s0, s0)", "s0" + " + 1" * 1000])
def test_shape_expressions_that_could_run_code_are_refused(text):
    assert expression_problem(text) is not None


def test_pickle_globals_are_read_without_running_and_odd_opcodes_fail_closed():
    assert "builtins.eval" in pickle_globals(b"\x80\x02cbuiltins\neval\nq\x00X\x01\x00\x00\x001q\x01\x85q\x02Rq\x03.")
    protocol4 = __import__("pickle").dumps(crafted._Payload(Path("/nonexistent"), "1"), protocol=4)
    assert "builtins.eval" in pickle_globals(protocol4)   # STACK_GLOBAL with memoised strings
    with pytest.raises(ValueError, match="INST"):
        pickle_globals(b"(ibuiltins\neval\nX\x01\x00\x00\x001.")
    assert checkpoint_problem(io.BytesIO(b"not a zip")) is not None
