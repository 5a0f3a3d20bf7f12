"""An MLflow model of a .pt2 that needs modules imported first (PT2E's operator library) loads in
a fresh process with `mlflow.pyfunc.load_model`: its pyfunc loader is ptflow's fixed
code/ptflow_loader.py, which imports exactly the manifest entry's `requires`; the check before
registering accepts that loader and nothing else."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ptflow.runs.logged_model_check import Untrusted, check_model_dir
from ptflow.runs.model_loader import loader_source
from tests.conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow   # a tracked int8_static run and a fresh process importing mlflow: ~20 s

RUN = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=1", "data.max_batches=1",
       "quantize=int8_static", "pipeline=[load,validate,quantize,export]", "export.formats=[pt2]",
       "export.register_as=int8-clf")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("requires")
    result = run_cli(cwd, *RUN)
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    (manifest_path,) = result.outputs.glob("runs/*/*/export/manifest.json")
    entry = json.loads(manifest_path.read_text())["files"][0]
    uri = run.data.tags["ptflow.model.pt2"]
    where = MlflowClient(tracking_uri=result.tracking_uri).get_logged_model(uri.removeprefix("models:/")).artifact_location
    folder = Path(download_artifacts(artifact_uri=where, dst_path=str(cwd / "dl")))
    return result, run, entry, uri, folder, manifest_path.parent


def test_the_registered_pt2e_model_loads_with_pyfunc_in_a_fresh_process(logged):
    result, run, entry, uri, folder, export_dir = logged
    assert entry["requires"] and run.data.tags["ptflow.registered"] == "int8-clf/1"
    assert (folder / "code" / "ptflow_loader.py").read_text() == loader_source(entry["requires"])
    script = textwrap.dedent(f"""
        import mlflow, numpy as np
        from safetensors.numpy import load_file
        mlflow.set_tracking_uri({result.tracking_uri!r})
        example = load_file({str(export_dir / 'model.example.safetensors')!r})
        model = mlflow.pyfunc.load_model("models:/int8-clf/1")
        print(float(np.abs(model.predict(example["input.pixels"]) - example["output"]).max()))
    """)
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert float(fresh.stdout.strip().splitlines()[-1]) < 1e-4


def test_the_loader_is_checked_byte_for_byte(logged, tmp_path):
    _, run, entry, _, folder, _ = logged
    copy = shutil.copytree(folder, tmp_path / "model")
    check_model_dir(copy, "pt2", entry, run.info.run_id)   # as logged: fine
    loader = copy / "code" / "ptflow_loader.py"
    loader.write_text(loader.read_text() + "import os; os.system('echo owned')\n")
    with pytest.raises(Untrusted, match="ptflow_loader.py is not the loader ptflow writes"):
        check_model_dir(copy, "pt2", entry, run.info.run_id)
    with pytest.raises(Untrusted, match="requires not a module name"):
        check_model_dir(folder, "pt2", {**entry, "requires": ["os; import evil"]}, run.info.run_id)
    # a manifest that requires nothing vouches for no loader at all
    with pytest.raises(Untrusted, match="code/ptflow_loader.py"):
        check_model_dir(folder, "pt2", {**entry, "requires": []}, run.info.run_id)
