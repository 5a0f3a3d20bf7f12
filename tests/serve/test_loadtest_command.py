"""``ptflow-serve RUN_ID --loadtest``: a real server (batching on, then off) driven by
tritonclient; the table, the PNG, and a run in MLflow linked to the served run."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serve.serving import tracked_run

pytestmark = pytest.mark.slow


def test_loadtest_records_figures_next_to_the_served_run(tmp_path):
    _, run_id = tracked_run(tmp_path)
    done = subprocess.run([sys.executable, "-m", "ptflow.serve.cli", run_id, "--loadtest", "--levels", "1,4",
                           "--duration-s", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for words in ("batching on", "batching off", "req/s", "p99 ms", "recorded: MLflow run"):
        assert words in done.stdout
    png = next(tmp_path.glob("outputs/loadtests/*/loadtest.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    served = client.get_run(run_id)
    loadtest = client.get_run(served.data.tags["ptflow.loadtest_run_id"])
    assert loadtest.data.tags["ptflow.served_run_id"] == run_id and loadtest.info.status == "FINISHED"
    metrics = loadtest.data.metrics
    for label in ("batching_on", "batching_off"):
        for level in (1, 4):
            assert metrics[f"serve/{label}/c{level}/throughput_per_s"] > 0
            assert metrics[f"serve/{label}/c{level}/p50_ms"] <= metrics[f"serve/{label}/c{level}/p99_ms"]
    assert loadtest.data.params["format"] == "pt2"
    assert float(served.data.tags["ptflow.served.throughput_per_s"]) > 0
    assert {a.path for a in client.list_artifacts(loadtest.info.run_id, "serve")} >= {"serve/loadtest.png",
                                                                                        "serve/loadtest.json"}
    compare = subprocess.run([sys.executable, "-m", "ptflow.review.compare_cli", "--all"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert "req/s at best (ptflow-serve --loadtest)" in compare.stdout, compare.stdout + compare.stderr
    assert "serve-loadtest" not in compare.stdout   # the load test's own run is not a recipe to rank
