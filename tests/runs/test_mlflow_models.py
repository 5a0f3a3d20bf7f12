"""The exported pt2 and onnx files as MLflow models: the same bytes as the manifest's, with a
signature (dynamic dims as -1) and an input example, loadable with MLflow's own API, registered
under export.register_as, logged again by relog, and refused at plan time where they cannot be."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core.errors import ConfigError
from ptflow.runs.mlflow_models import signature
from tests.conftest import compose, mlflow_runs, run_cli

TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "pipeline=[load,validate,export]")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One tracked run exporting pt2 + onnx, the pt2 registered as 'digits-clf'."""
    cwd = tmp_path_factory.mktemp("models")
    result = run_cli(cwd, *TINY, "export.formats=[pt2,onnx]", "export.register_as=digits-clf")
    assert result.code == 0, result.stderr
    return result


@pytest.fixture
def store(monkeypatch):
    """Point MLflow's fluent API at a result's store; undone after the test (set_tracking_uri
    also exports MLFLOW_TRACKING_URI, which later ptflow subprocesses would follow)."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield lambda result: mlflow.set_tracking_uri(result.tracking_uri)
    mlflow.set_tracking_uri(None)


def _manifest(result) -> tuple[dict, Path]:
    (path,) = result.outputs.glob("runs/*/*/export/manifest.json")
    return json.loads(path.read_text()), path.parent


def _example(export_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(export_dir / "model.example.safetensors"))


def test_the_registered_model_is_the_exported_file_and_loads_with_mlflow(registered, store):
    import mlflow

    store(registered)
    manifest, export_dir = _manifest(registered)
    (run,) = mlflow_runs(registered)
    assert run.data.tags["ptflow.registered"] == "digits-clf/1"
    version = mlflow.MlflowClient().get_model_version("digits-clf", "1")
    assert version.run_id == run.info.run_id
    assert version.source.startswith("models:/") and version.source == run.data.tags["ptflow.model.pt2"]
    local = Path(mlflow.artifacts.download_artifacts("models:/digits-clf/1"))
    pt2 = next(e for e in manifest["files"] if e["format"] == "pt2")
    assert hashlib.sha256((local / "data" / "model.pt2").read_bytes()).hexdigest() == pt2["sha256"]
    assert "torch==" in (local / "requirements.txt").read_text()

    example = _example(export_dir)
    x = example["input.pixels"]
    module = mlflow.pytorch.load_model("models:/digits-clf/1")
    assert torch.allclose(module(torch.from_numpy(x)), torch.from_numpy(example["output"]), atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model("models:/digits-clf/1")
    (spec,) = pyfunc.metadata.get_input_schema().inputs
    assert spec.shape == (-1, 64) and spec.type == np.dtype("float32")
    assert pyfunc.metadata.get_output_schema().inputs[0].shape == (-1, 10)
    assert np.allclose(pyfunc.predict(x[:1]), example["output"][:1], atol=1e-5)   # another batch size
    assert "saved_input_example_info" in (local / "MLmodel").read_text()


def test_the_onnx_file_is_an_mlflow_model_served_by_onnxruntime(registered, store):
    import mlflow

    store(registered)
    _, export_dir = _manifest(registered)
    (run,) = mlflow_runs(registered)
    model = mlflow.pyfunc.load_model(run.data.tags["ptflow.model.onnx"])
    example = _example(export_dir)
    (out,) = model.predict(example["input.pixels"]).values()
    assert np.allclose(out, example["output"], atol=1e-3)
    local = Path(mlflow.artifacts.download_artifacts(run.data.tags["ptflow.model.onnx"]))
    onnx_entry = next(e for e in _manifest(registered)[0]["files"] if e["format"] == "onnx")
    assert hashlib.sha256((local / "model.onnx").read_bytes()).hexdigest() == onnx_entry["sha256"]
    logged = mlflow.MlflowClient().get_logged_model(run.data.tags["ptflow.model.onnx"].removeprefix("models:/"))
    assert logged.source_run_id == run.info.run_id and logged.name == "model-onnx"
    # in the run's experiment, its artifacts in the store's artifact root (never ./mlruns)
    assert logged.experiment_id == run.info.experiment_id and str(logged.status).endswith("READY")
    assert str(registered.outputs / "mlartifacts") in logged.artifact_location
    assert not (registered.cwd / "mlruns").exists()


def test_relog_into_another_store_logs_and_registers_the_models_there(registered, tmp_path):
    import mlflow

    (run_dir,) = registered.outputs.glob("runs/*/*")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    proc = subprocess.run([sys.executable, "-m", "ptflow.runs.runs_cli", "relog", str(run_dir), "--tracking-uri", other],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "mlruns").exists()   # the models' artifacts went next to other.db
    client = mlflow.MlflowClient(other)
    (run,) = client.search_runs([client.get_experiment_by_name("ptflow").experiment_id])
    assert {"ptflow.model.pt2", "ptflow.model.onnx"} <= set(run.data.tags)
    assert client.get_model_version("digits-clf", "1").run_id == run.info.run_id


def test_keyword_inputs_get_a_named_signature_and_a_dict_example(tmp_path, store):
    """The transformer takes rows= and mask=: MLflow gets named tensor specs; pt2 loads with
    mlflow.pytorch (MLflow's pytorch pyfunc takes one array, so it gets no pyfunc flavor)."""
    import mlflow

    result = run_cli(tmp_path, "experiment=digits_transformer", "data.max_batches=1", "benchmark=quick",
                     "pipeline=[load,validate,export]")
    assert result.code == 0, result.stderr
    store(result)
    (run,) = mlflow_runs(result)
    uri = run.data.tags["ptflow.model.pt2"]
    info = mlflow.models.get_model_info(uri)
    assert [s.name for s in info.signature.inputs.inputs] == ["rows", "mask"]
    assert "python_function" not in info.flavors
    example = _example(_manifest(result)[1])
    module = mlflow.pytorch.load_model(uri)
    out = module(rows=torch.from_numpy(example["input.rows"]), mask=torch.from_numpy(example["input.mask"]))
    assert torch.allclose(out, torch.from_numpy(example["output"]), atol=1e-4)


def test_signature_marks_dims_that_vary_as_dynamic():
    example = {"inputs": [{"name": "ids", "dtype": "int64", "shape": [-1, -1]}],
               "outputs": [{"name": "output.logits", "dtype": "float32", "shape": [-1, -1, 5]},
                           {"name": "output.pooled", "dtype": "float32", "shape": [-1, 5]}]}
    sig = signature(example)
    assert sig.inputs.inputs[0].shape == (-1, -1) and sig.inputs.inputs[0].name == "ids"
    assert [s.shape for s in sig.outputs.inputs] == [(-1, -1, 5), (-1, 5)]


@pytest.mark.parametrize("overrides, key, says", [
    (("export.register_as=a/b",), "register_as", "registered model name"),
    (("export.formats=[safetensors]", "export.register_as=clf"), "register_as", "add pt2"),
    (("tracking=none", "export.register_as=clf"), "export.register_as", "tracking=mlflow"),
    (("tracking.log_models=false", "export.register_as=clf"), "export.register_as", "log_models=true"),
])
def test_register_as_is_refused_before_any_work_where_it_cannot_register(overrides, key, says):
    config, choices = compose(*TINY, *overrides)
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    assert key in str(caught.value) and says in str(caught.value)
