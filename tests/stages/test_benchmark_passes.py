"""benchmark's untimed passes and pictures wired into a real run, and the device lock proven
across a parallel sweep: two jobs' timed sections never overlap."""
from __future__ import annotations

import json

import pytest

from tests.conftest import mlflow_runs, run_cli

QUICK = ("experiment=latency_only", "benchmark=quick", "device.threads=1")


def _records(outputs):
    return [json.loads(p.read_text()) for p in sorted(outputs.glob("**/ptflow_result.json"))]


def test_memory_flops_profile_and_pictures_land_in_the_run_and_in_mlflow(tmp_path):
    result = run_cli(tmp_path, *QUICK, "benchmark.profile=true", "benchmark.plots=true",
                     "benchmark.batch_sizes=[4,16]", "tracking.log_exports=false")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    m = run.data.metrics
    for role in ("baseline", "candidate"):
        assert m[f"benchmark/{role}.peak_rss_mb"] > 0 and m[f"benchmark/{role}.param_buffer_mb"] > 0
        assert m[f"benchmark/{role}.achieved_tflops"] > 0
    assert m["benchmark/flops_per_call"] > 0
    assert m["benchmark/lock_wait_s"] >= 0 and m["benchmark/timed_end"] >= m["benchmark/timed_start"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "files")}
    for name in ("benchmark.histogram", "benchmark.latency_vs_batch", "benchmark.samples_csv",
                 "benchmark.candidate.profile_table", "benchmark.candidate.trace"):
        assert f"files/{name}" in logged, logged
    (record,) = _records(result.outputs)
    table = open(record["files"]["benchmark.candidate.profile_table"]).read()
    assert "Self CPU" in table and json.load(open(record["files"]["benchmark.baseline.trace"]))
    assert open(record["files"]["benchmark.histogram"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "files/export.pt2" not in logged   # log_exports=false still keeps model files out


@pytest.mark.slow
def test_parallel_sweep_jobs_never_time_at_once(tmp_path):
    result = run_cli(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK,
                     "tracking=none", "quantize=none,int8_dynamic", "benchmark.min_time_s=1.0",
                     "benchmark.max_time_s=2.0")
    assert result.code == 0, result.stderr
    records = _records(result.outputs)
    assert len(records) == 2 and all(r["status"] == "FINISHED" for r in records)
    a, b = sorted((r["metrics"]["benchmark.timed_start"], r["metrics"]["benchmark.timed_end"]) for r in records)
    assert a[1] - a[0] >= 1.0 and b[1] - b[0] >= 1.0   # each held the device for its whole timing
    assert b[0] >= a[1], f"timed sections overlap: {a} and {b}"
