"""export.formats in-process on a tiny MLP: each registered format is written atomically,
reloaded fresh and checked on every eval batch (and a 1-row batch), listed in a complete
manifest, byte-identical across two exports, and refused at plan time where it cannot work."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.artifact import Form
from ptflow.core.errors import ConfigError
from ptflow.stages.export import formats
import ptflow.stages.export.stage  # noqa: F401 (the stage registers the formats ptflow ships)
from tests.conftest import compose, make_context

# the fresh-process check has its own tests (test_export_fresh.py, and every table cell in the slow suite)
TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "tracking=none", "export.fresh_check=false")
EXPORT_ONLY = "pipeline=[load,validate,export]"
FAST = ("pt2", "onnx", "safetensors", "torchscript")
ALL = "export.formats=[pt2,onnx,safetensors,torchscript]"


def _run(tmp_path, *overrides):
    config, choices = compose(*TINY, EXPORT_ONLY, *overrides)
    plan = compile_plan(config, choices)
    torch.manual_seed(plan.settings.seed)   # as the job runner does: the same config, the same weights
    warnings: dict[str, str] = {}
    ctx = make_context(tmp_path, plan)
    ctx = type(ctx)(**{**ctx.__dict__, "warn": warnings.__setitem__})
    return engine.run(plan, ctx, ()), warnings


def _manifest(tmp_path):
    return json.loads((tmp_path / "export" / "manifest.json").read_text())


def test_every_format_is_registered():
    assert set(formats()) == {"pt2", "onnx", "safetensors", "torchscript", "aoti"}


@pytest.mark.parametrize("fmt", FAST)
def test_each_format_is_written_reloaded_and_faithful(tmp_path, fmt):
    artifact, warnings = _run(tmp_path, f"export.formats=[{fmt}]")
    m = artifact.metrics
    assert m[f"export.{fmt}.reload_max_abs_error"] <= formats()[fmt].tolerance
    assert m[f"export.{fmt}.size_mb"] > 0 and m[f"export.{fmt}.export_s"] > 0
    assert m["export.size_mb"] == m[f"export.{fmt}.size_mb"]      # the headline: the first format
    path = artifact.files[f"export.{fmt}"]
    assert path.is_file() and path.name == "model" + formats()[fmt].suffix
    assert artifact.form is (Form.EXPORTED if fmt == "pt2" else Form.EAGER)
    (entry,) = _manifest(tmp_path)["files"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["load"] and path.name in entry["load"] and "torch" in entry["versions"]
    if fmt == "onnx":
        assert entry["opset"] >= 18 and {"onnx", "onnxruntime"} <= set(entry["versions"])
    if fmt == "torchscript":
        assert {k for k in warnings if k.startswith("export")} == {"export.torchscript"} and "deprecated" in warnings["export.torchscript"]
    assert not list((tmp_path / "export").glob(".*partial*"))


def test_several_formats_in_one_run_and_a_complete_manifest(tmp_path):
    artifact, _ = _run(tmp_path, ALL)
    manifest = _manifest(tmp_path)
    assert [e["format"] for e in manifest["files"]] == list(FAST)
    for entry in manifest["files"]:
        path = tmp_path / "export" / entry["file"]
        assert entry["size_bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["metrics"]["reload_max_abs_error"] <= entry["tolerance"]
    assert manifest["inputs"][0]["shape"][0] == "batch" and manifest["dynamic_dims"] == ["batch"]
    assert manifest["config_hash"] and manifest["metrics"]["export.onnx.size_mb"] > 0
    assert set(artifact.files) >= {f"export.{f}" for f in FAST} | {"export.manifest"}


def test_a_load_hint_loads_the_file_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    _run(tmp_path, "export.formats=[pt2,onnx]")
    for entry in _manifest(tmp_path)["files"]:
        subprocess.run([sys.executable, "-c", entry["load"]], cwd=tmp_path / "export", check=True, timeout=60)


def test_two_exports_of_the_same_config_are_byte_identical(tmp_path):
    """pt2, onnx and safetensors even within one process. torchscript is identical only across
    fresh processes (one export per `ptflow` run): inside one process torch.jit mangles class
    names with a counter (___torch_mangle_N), its .debug_pkl records the caller's stack and
    .data/serialization_id changes per save."""
    _run(tmp_path / "a", ALL)
    _run(tmp_path / "b", ALL)
    digests = [{e["format"]: e["sha256"] for e in _manifest(tmp_path / run)["files"]} for run in "ab"]
    for fmt in ("pt2", "onnx", "safetensors"):
        assert digests[0][fmt] == digests[1][fmt], fmt


def test_a_failing_format_leaves_no_file_and_no_manifest(tmp_path):
    """A tolerance no file can meet fails the second format: the first, already checked, is not kept."""
    from ptflow.core.errors import StageError

    with pytest.raises(StageError, match="export.formats=onnx"):
        _run(tmp_path, "export.formats=[pt2,onnx]", "export.tolerance.onnx=0.0", "model.builder.hidden=33")
    assert list((tmp_path / "export").iterdir()) == []


def test_a_keyword_input_model_exports_every_fast_format(tmp_path):
    config, choices = compose("experiment=digits_transformer", "model.weights=null", "data.max_batches=1",
                              "tracking=none", EXPORT_ONLY, ALL)
    plan = compile_plan(config, choices)
    artifact = engine.run(plan, make_context(tmp_path, plan), ())
    manifest = _manifest(tmp_path)
    assert [t["passed_as"] for t in manifest["inputs"]] == ["keyword", "keyword"]
    assert all(artifact.metrics[f"export.{f}.reload_max_abs_error"] <= formats()[f].tolerance for f in FAST)


def test_dynamic_dims_beyond_the_batch_are_honoured_and_verified_at_a_second_size(tmp_path, monkeypatch):
    from ptflow.stages.export import stage as export

    sizes = []
    checked = export._max_abs_error

    def recording(runner, checks, expected, name):
        sizes.extend(tuple(c.kwargs["rows"].shape[:2]) for c in checks)
        return checked(runner, checks, expected, name)

    monkeypatch.setattr(export, "_max_abs_error", recording)
    config, choices = compose("experiment=digits_transformer", "data.max_batches=1", "tracking=none", EXPORT_ONLY,
                              "export.formats=[pt2,onnx]",
                              "data.dynamic_dims={rows: {1: {label: tokens, max: 8}}, mask: {1: tokens}}")
    plan = compile_plan(config, choices)
    engine.run(plan, make_context(tmp_path, plan), ())
    manifest = _manifest(tmp_path)
    assert [t["shape"] for t in manifest["inputs"]] == [["batch", "tokens", 8], ["batch", "tokens"]]
    assert (150, 7) in sizes and (1, 8) in sizes          # a second size for each dynamic dim
    program = torch.export.load(tmp_path / "export" / "model.pt2").module()
    out = program(rows=torch.rand(3, 5, 8), mask=torch.ones(3, 5))
    assert out.shape == (3, 10)                            # the file takes 5 tokens, not only 8


def test_the_old_format_key_names_its_replacement():
    config, choices = compose(*TINY, EXPORT_ONLY, "export.format=pt2")
    with pytest.raises(ConfigError, match=r"replaced by export.formats=\[pt2\]"):
        compile_plan(config, choices)


def test_an_unknown_format_lists_the_registered_ones():
    config, choices = compose(*TINY, EXPORT_ONLY, "export.formats=[pt3]")
    with pytest.raises(ConfigError, match="'aoti'.*'onnx'.*'pt2'"):
        compile_plan(config, choices)


REFUSED = [
    (("quantize=legacy_dynamic", "export.formats=[pt2]"), "torch.ao's packed"),
    (("quantize=legacy_dynamic", "export.formats=[onnx]"), "packed layers"),
    (("quantize=legacy_dynamic", "export.formats=[aoti]"), "torch.ao's packed"),
    (("quantize=legacy_dynamic", "export.formats=[safetensors]"), "packed params"),
    (("quantize=int8_dynamic", "export.formats=[onnx]"), "tensor subclasses"),
    (("quantize=int8_dynamic", "export.formats=[safetensors]"), "tensor subclasses"),
    (("quantize=int8_weight_only", "export.formats=[torchscript]"), "tensor subclasses"),
    (("quantize=bf16", "export.formats=[onnx]"), "no bfloat16 Gemm"),
]


@pytest.mark.parametrize("overrides, says", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_the_plan_refuses_what_cannot_work(overrides, says):
    config, choices = compose(*TINY, "pipeline=[load,validate,quantize,export]", *overrides)
    with pytest.raises(ConfigError, match="export") as error:
        compile_plan(config, choices)
    assert says in str(error.value)


def test_torchscript_of_an_exported_program_is_refused(tmp_path):
    from ptflow.stages.export.stage import ExportConfig, ExportStage

    stage = ExportStage(ExportConfig(formats=("torchscript",)))
    assert Form.EXPORTED not in stage.consumes()
    assert "torch.export program" in stage.refusal(Form.EXPORTED)
    for fmt in ("pt2", "onnx", "aoti"):
        assert "TorchScript" in ExportStage(ExportConfig(formats=(fmt,))).refusal(Form.SCRIPTED)


@pytest.mark.slow
def test_aoti_is_written_reloaded_and_its_bytes_measured(tmp_path):
    a, _ = _run(tmp_path / "a", "export.formats=[aoti]")
    assert a.metrics["export.aoti.reload_max_abs_error"] <= 1e-3
    b, _ = _run(tmp_path / "b", "export.formats=[aoti]")
    digests = [_manifest(tmp_path / r)["files"][0]["sha256"] for r in "ab"]
    print("aoti byte-identical:", digests[0] == digests[1])


PT2E = ("pipeline=[load,validate,quantize,export]", "quantize=int8_static", "quantize.calibration.batches=1",
        "export.formats=[pt2]")


def test_a_pt2e_export_names_its_graphs_by_number_not_by_python_id(tmp_path):
    """PT2E's provenance records each graph by id(): renumbered 0, 1, ... the file depends only on
    the program (the same graph keeps its number)."""
    import re
    import zipfile

    _run(tmp_path, *PT2E)
    (entry,) = _manifest(tmp_path)["files"]
    with zipfile.ZipFile(tmp_path / "export" / entry["file"]) as archive:
        model = archive.read("archive/models/model.json")
    ids = {int(n) for n in re.findall(rb'graph_id\\": (\d+)', model)}
    assert ids and ids == set(range(len(ids))), sorted(ids)[:5]


@pytest.mark.slow
def test_a_pt2e_export_is_byte_identical_across_processes(tmp_path):
    """Two processes, one int8_static export each: the same sha256 (ptflow-reproduce compares pt2 by it)."""
    import subprocess
    import sys

    code = ("import sys, json, pathlib; from tests.stages.test_export_formats import _run, _manifest, PT2E; "
            "p = pathlib.Path(sys.argv[1]); _run(p, *PT2E); print(_manifest(p)['files'][0]['sha256'])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in "ab"]
    shas = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        shas.append(out.split()[-1])
    assert shas[0] == shas[1] and len(shas[0]) == 64


def _onnx_names(path) -> list[tuple[str, list]]:
    import onnx

    graph = onnx.load(path).graph
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*graph.input, *graph.output)]


def test_onnx_names_follow_the_model_and_the_data_spec(tmp_path):
    """Output names from the model's output keys, inputs from the data spec, dims by their labels
    (torch names them linear_2 and s81): what onnxruntime, a client and MLflow's signature see."""
    _run(tmp_path / "mlp", "export.formats=[onnx]")
    assert _onnx_names(tmp_path / "mlp" / "export" / "model.onnx") == [("pixels", ["batch", 64]),
                                                                       ("output", ["batch", 10])]
    config, choices = compose(*TINY, EXPORT_ONLY, "export.formats=[onnx]", "data.metric=null")
    config["model"]["builder"] = {"_target_": "tests.toy_models.KeywordNet", "width": 4}
    config["data"].update(source={"_target_": "tests.toy_models.keyword_split", "rows": 8}, calibration=None)
    plan = compile_plan(config, choices)
    engine.run(plan, make_context(tmp_path / "keyword", plan), ())
    assert _onnx_names(tmp_path / "keyword" / "export" / "model.onnx") == [
        ("features", ["batch", 8]), ("mask", ["batch", 8]), ("logits", ["batch", 3]), ("hidden", ["batch", 4])]


def test_onnx_output_names_never_clash_and_dims_keep_torchs_symbol_when_ambiguous():
    import onnx
    from onnx import TensorProto, helper

    from ptflow.core.spec import InputSpec, TensorSpec
    from ptflow.stages.export.onnx_names import output_names, rename_dims, rename_outputs

    assert output_names(["output", "output.logits", "output.0", "output.a.b"]) == ["output", "logits", "output_0",
                                                                                  "a_b"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["s1", "s2"])
    y = helper.make_tensor_value_info("relu_1", TensorProto.FLOAT, ["s1", "s2"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["relu_1"])], "g", [x], [y])
    rename_outputs(graph, ["x"])                  # the input's name: torch's name stays
    assert graph.output[0].name == "relu_1"
    rename_outputs(graph, ["logits"])
    assert graph.output[0].name == "logits" and graph.node[0].output[0] == "logits"
    rename_dims(graph, InputSpec((TensorSpec("x", ("batch", "seq"), "float32"),)))
    assert [d.dim_param for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    onnx.checker.check_graph(graph)
    shared = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["s1", "s1"])], [])
    rename_dims(shared, InputSpec((TensorSpec("x", ("batch", "seq"), "float32"),)))   # one symbol, two labels
    assert [d.dim_param for d in shared.input[0].type.tensor_type.shape.dim] == ["s1", "s1"]
