"""A shared `mlflow server` with an attacker on it: nothing they write runs on a victim's machine.

The victim tracks a real run into a real server on 127.0.0.1. The attacker is an MlflowClient
pointed at the server's URL: every call it makes is an HTTP request to the server's REST API
(tracking calls and the artifact proxy); it never touches the server's files. It then tries
what the trust-boundaries review did, each payload leaving a marker file if it ever runs:

1. overwrite the run's config.yaml artifact with a `torch.load(weights_only=false)` builder
   → ptflow-reproduce refuses before anything runs;
2. log a new FINISHED run whose config writes a `.pth` file into site-packages (so every later
   Python start would run the attacker's command) → refused;
3. log a model of their own (claiming the victim's run) and point the run's ptflow.model.pt2
   tag at it → ptflow-compare --register refuses (its bytes are not the manifest's);
4. edit the victim's own logged model in place (its MLmodel's loader_module) → refused.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import crafted_files as crafted
from tests.conftest import run_cli
from tests.mlflow_server import Server   # the fixture `server` comes from conftest

pytestmark = pytest.mark.slow

# a tiny model's microsecond timings can spread past invalid_dispersion on a busy machine, and an
# invalid benchmark is not ranked (so not registered): this test is about trust, not timing
RUN = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=1", "data.max_batches=1",
       "quantize=none", "benchmark=quick", "benchmark.invalid_dispersion=100", "pipeline=[load,validate,benchmark,export]")


def _command(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _upload(location: str, folder: Path, server: Server) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    # PUTs through the server's artifact proxy
    get_artifact_repository(location, tracking_uri=server.uri).log_artifacts(str(folder))


def test_a_store_writer_cannot_make_reproduce_or_register_run_their_code(tmp_path, server):
    from mlflow.tracking import MlflowClient

    victim = tmp_path / "victim"
    victim.mkdir()
    result = run_cli(victim, *RUN, f"tracking.uri={server.uri}")
    assert result.code == 0, result.stderr
    attacker = MlflowClient(tracking_uri=server.uri)
    assert server.uri.startswith("http://127.0.0.1:")
    experiment = attacker.get_experiment_by_name("ptflow")
    (run,) = attacker.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    marker, site = tmp_path / "MARKER", tmp_path / "site-packages"
    site.mkdir()

    # 1. the run's config.yaml, overwritten in place
    evil = tmp_path / "evil.pt"
    evil.write_bytes(crafted.payload_bytes(marker))
    config = yaml.safe_load(Path(attacker.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text())
    config["model"]["builder"] = {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "config.yaml").write_text(yaml.safe_dump(config))
    attacker.log_artifact(run_id, str(upload / "config.yaml"))
    proc = _command(victim, "ptflow.review.reproduce", run_id, "--tracking-uri", server.uri)
    assert proc.returncode == 2 and "torch.load" in proc.stderr and "weights_only=False" in proc.stderr, proc.stderr

    # 2. a new FINISHED run of the attacker's, writing a .pth into site-packages
    theirs = attacker.create_run(experiment.experiment_id, run_name="digits_mlp-int8_dynamic-inductor")
    config["model"]["builder"] = {"_target_": "ptflow.core.files.write_atomic", "path": str(site / "owned.pth"),
                                  "data": f"import os; open({str(marker)!r}, 'w').close()"}
    (upload / "config.yaml").write_text(yaml.safe_dump(config))
    attacker.log_artifact(theirs.info.run_id, str(upload / "config.yaml"))
    attacker.set_terminated(theirs.info.run_id, "FINISHED")
    proc = _command(victim, "ptflow.review.reproduce", theirs.info.run_id, "--tracking-uri", server.uri,
                    "--allow-target", "*")
    assert proc.returncode == 2 and "ptflow.core.files.write_atomic" in proc.stderr, proc.stderr

    # 3. their own model, claiming the victim's run, and the run's tag pointed at it
    genuine = attacker.get_logged_model(run.data.tags["ptflow.model.pt2"].removeprefix("models:/"))
    from mlflow.artifacts import download_artifacts

    folder = Path(download_artifacts(artifact_uri=genuine.artifact_location, dst_path=str(tmp_path / "genuine"),
                                     tracking_uri=server.uri))
    forged = shutil.copytree(folder, tmp_path / "forged")
    crafted.pt2_pickled_sample_inputs(forged / "data" / "model.pt2", marker)
    model = attacker.create_logged_model(experiment.experiment_id, name="model-pt2", source_run_id=run_id)
    _upload(model.artifact_location, forged, server)
    attacker.set_tag(run_id, "ptflow.model.pt2", f"models:/{model.model_id}")
    register = ("--tracking-uri", server.uri, "--all", "--max-accuracy-drop", "1", "--register", "prod-clf")
    proc = _command(victim, "ptflow.review.compare_cli", *register)
    assert proc.returncode == 2 and "not registering" in proc.stderr and "sha256" in proc.stderr, proc.stderr

    # 4. the victim's own logged model, edited in place
    attacker.set_tag(run_id, "ptflow.model.pt2", f"models:/{genuine.model_id}")
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["loader_module"] = "attacker_loader"
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    _upload(genuine.artifact_location, edited, server)
    proc = _command(victim, "ptflow.review.compare_cli", *register)
    assert proc.returncode == 2 and "loader_module='attacker_loader'" in proc.stderr, proc.stderr

    assert not attacker.search_registered_models()
    assert len(attacker.search_runs([experiment.experiment_id])) == 2   # no reproduction ever started
    assert not marker.exists() and not (site / "owned.pth").exists()
