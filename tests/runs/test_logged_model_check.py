"""What ptflow registers is what the run exported: a logged model is checked against the run's
manifest and the files and flavours ptflow writes before `--register` or `export.register_as`.

One tracked run (pt2 + onnx, logged as MLflow models); each tampering a store writer could do
is applied to a copy of its model (or to the store itself) and must be refused, by name."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ptflow.runs.logged_model_check import Untrusted, check_logged_model, check_model_dir
from tests import crafted_files as crafted
from tests.conftest import STEADY, mlflow_runs, run_cli

RUN = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=1", "data.max_batches=1",
       "quantize=none", "benchmark=quick", "pipeline=[load,validate,benchmark,export]", "export.formats=[pt2,onnx]", *STEADY)   # registering needs a valid (ranked) run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("logged")
    result = run_cli(cwd, *RUN)
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    (manifest_path,) = result.outputs.glob("runs/*/*/export/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    locations = {fmt: client.get_logged_model(run.data.tags[f"ptflow.model.{fmt}"].removeprefix("models:/"))
                 .artifact_location for fmt in ("pt2", "onnx")}
    dirs = {fmt: Path(download_artifacts(artifact_uri=where, dst_path=str(cwd / f"dl-{fmt}")))
            for fmt, where in locations.items()}
    return SimpleNamespace(cwd=cwd, result=result, run=run, client=client, manifest=manifest, dirs=dirs)


def _entry(exported, fmt):
    return next(e for e in exported.manifest["files"] if e["format"] == fmt)


def test_the_runs_own_models_pass(exported):
    for fmt in ("pt2", "onnx"):
        check_logged_model(exported.client, exported.run.info.run_id, exported.run.data.tags[f"ptflow.model.{fmt}"], fmt)


def _mlmodel(folder: Path, change):
    data = yaml.safe_load((folder / "MLmodel").read_text())
    change(data)
    (folder / "MLmodel").write_text(yaml.safe_dump(data))


TAMPERING = {   # id -> (format, what the store writer does to the model dir, what the refusal names)
    "loader-module": ("pt2", lambda d: _mlmodel(d, lambda m: m["flavors"]["python_function"].update(
        loader_module="evil_loader")), "loader_module='evil_loader'"),
    "code-dir": ("pt2", lambda d: ((d / "code").mkdir(), (d / "code" / "evil.py").write_text("x = 1")), "code/evil.py"),
    "code-key": ("pt2", lambda d: _mlmodel(d, lambda m: m["flavors"]["python_function"].update(code="code")),
                 "code='code'"),
    "python-model": ("pt2", lambda d: _mlmodel(d, lambda m: m["flavors"]["python_function"].update(
        python_model="python_model.pkl")), "python_model"),
    "pickled-model-beside": ("pt2", lambda d: (d / "data" / "model.pth").write_bytes(b"x"), "data/model.pth"),
    "other-flavour": ("onnx", lambda d: _mlmodel(d, lambda m: m["flavors"].update(sklearn={"pickled_model": "m.pkl"})),
                      "flavours"),
    "swapped-pt2": ("pt2", lambda d: crafted.pt2_pickled_sample_inputs(d / "data" / "model.pt2", d / "never"),
                    "sha256"),
    "swapped-onnx": ("onnx", lambda d: (d / "model.onnx").write_bytes(b"\x08\x07"), "sha256"),
    "extra-requirement": ("pt2", lambda d: (d / "requirements.txt").write_text("mlflow\nevil-package==6.6\n"),
                          "evil-package==6.6"),
    "conda-channel": ("onnx", lambda d: (d / "conda.yaml").write_text(yaml.safe_dump(
        {"channels": ["evil"], "dependencies": ["python=3.11"]})), "channels"),
}


@pytest.mark.parametrize("case", TAMPERING, ids=list(TAMPERING))
def test_each_tampering_is_refused_by_name(exported, tmp_path, case):
    fmt, tamper, says = TAMPERING[case]
    folder = shutil.copytree(exported.dirs[fmt], tmp_path / "model")
    check_model_dir(folder, fmt, _entry(exported, fmt), exported.run.info.run_id)   # untouched: fine
    tamper(folder)
    with pytest.raises(Untrusted) as caught:
        check_model_dir(folder, fmt, _entry(exported, fmt), exported.run.info.run_id)
    assert says in str(caught.value)


def _compare_register(exported):
    return subprocess.run([sys.executable, "-m", "ptflow.review.compare_cli", "--all", "--max-accuracy-drop", "1",
                           "--register", "prod-clf"], cwd=exported.cwd, capture_output=True, text=True, timeout=300)


def test_register_refuses_a_model_the_tag_was_repointed_to(exported, tmp_path):
    """Another store user logs their own model and points the run's tag at it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client, run = exported.client, exported.run
    theirs = client.create_logged_model(run.info.experiment_id, name="model-pt2")
    folder = shutil.copytree(exported.dirs["pt2"], tmp_path / "theirs")
    crafted.pt2_pickled_sample_inputs(folder / "data" / "model.pt2", tmp_path / "MARKER")
    get_artifact_repository(theirs.artifact_location).log_artifacts(str(folder))
    original = run.data.tags["ptflow.model.pt2"]
    client.set_tag(run.info.run_id, "ptflow.model.pt2", f"models:/{theirs.model_id}")
    try:
        proc = _compare_register(exported)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "not registering" in proc.stderr and "not by run" in proc.stderr
        assert not client.search_registered_models()
    finally:
        client.set_tag(run.info.run_id, "ptflow.model.pt2", original)
    assert not (tmp_path / "MARKER").exists()
    proc = _compare_register(exported)   # the genuine model registers
    assert proc.returncode == 0 and "as models:/prod-clf/1" in proc.stdout, proc.stdout + proc.stderr
