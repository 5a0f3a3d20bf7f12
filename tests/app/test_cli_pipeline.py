"""End to end through the real CLI and Hydra app: the default pipeline and a sweep."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from tests.conftest import mlflow_runs, run_cli


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return run_cli(tmp_path_factory.mktemp("default"))


def test_default_pipeline_succeeds_and_prints_summary(default_run):
    assert default_run.code == 0, default_run.stderr
    out = default_run.stdout
    for text in ("latency p50", "latency p99", "speedup", "top1_accuracy", "output agreement",
                 "model size", "export", "MLflow run", "mlflow ui --backend-store-uri sqlite:///"):
        assert text in out


def test_default_pipeline_logs_sane_metrics(default_run):
    (run,) = mlflow_runs(default_run)
    assert run.info.status == "FINISHED"
    m = run.data.metrics          # MLflow keys: the stage, '/', then ptflow's name for the metric
    assert m["validate/top1_accuracy"] > 0.95                 # the bundled model is really trained
    # consistent, not fast: how fast is bench/'s question (a busy CI box may time anything)
    # this process's ratio is its p50s' ratio; the headline is the geometric mean over the processes
    assert m["benchmark/repeat.1.speedup_p50"] == pytest.approx(m["benchmark/baseline.p50_ms"] / m["benchmark/candidate.p50_ms"])
    processes = int(m["benchmark/repeats"])
    assert processes == 5 and run.data.tags["benchmark.ci_scope"] == "5 processes"
    ratios = [m[f"benchmark/repeat.{i}.speedup_p50"] for i in range(1, processes + 1)]
    assert m["benchmark/speedup_p50"] == pytest.approx(math.prod(ratios) ** (1 / processes))
    assert m["benchmark/speedup_ci_low"] < m["benchmark/speedup_p50"] < m["benchmark/speedup_ci_high"]
    assert abs(m["benchmark/top1_accuracy_delta"]) < 0.02     # and barely less accurate
    assert m["benchmark/top1_agreement"] > 0.97
    assert 0 < m["benchmark/max_abs_error"] < 1.0
    assert m["benchmark/candidate.p50_ms"] <= m["benchmark/candidate.p90_ms"] <= m["benchmark/candidate.p99_ms"]
    assert m["benchmark/candidate.n"] == m["benchmark/baseline.n"] >= 100   # iters is the minimum
    assert m["quantize/size_mb"] < m["load/size_mb"] / 2
    assert m["export/reload_max_abs_error"] <= 1e-4 and m["export/pt2.reload_max_abs_error"] <= 1e-4
    for stage in ("load", "validate", "quantize", "compile", "benchmark", "export"):
        assert f"{stage}/duration_s" in m


def test_default_pipeline_logs_params_tags_and_artifacts(default_run):
    from mlflow.tracking import MlflowClient

    (run,) = mlflow_runs(default_run)
    params, tags = run.data.params, run.data.tags
    assert params["quantize.method"] == "int8_dynamic"
    assert params["pipeline"] == json.dumps(["load", "validate", "quantize", "compile", "benchmark", "export"])
    for key in ("torch_version", "device_name", "threads", "interop_threads", "matmul_precision",
                "cudnn_benchmark"):
        assert f"system.{key}" in params
    assert not any(k.startswith("hydra") for k in params)
    assert tags["quantize"] == "int8_dynamic" and tags["compile"] == "eager" and tags["model"] == "digits_mlp"
    assert "git_sha" in tags and "hostname" in tags
    client = MlflowClient(tracking_uri=default_run.tracking_uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.txt", "command.txt", "plan.txt", "summary.json", "files"} <= names
    command = client.download_artifacts(run.info.run_id, "command.txt", str(default_run.cwd / "artifacts"))
    assert Path(command).read_text() == "ptflow\n"   # ptflow's own config, no overrides: the bare command
    files = {a.path for a in client.list_artifacts(run.info.run_id, "files")}
    assert {"files/export.pt2", "files/export.manifest"} <= files


def test_default_run_reads_in_the_mlflow_ui_without_adding_columns(default_run):
    """What the runs table and run page show as they open: the description, a recipe to group
    by, the group choices as params, a named model, a classic ML experiment, ptflow's version."""
    from mlflow.tracking import MlflowClient

    import ptflow

    (run,) = mlflow_runs(default_run)
    params, tags, m = run.data.params, run.data.tags, run.data.metrics
    assert tags["recipe"] == "int8_dynamic+eager"
    assert params["quantize"] == "int8_dynamic" and params["compile"] == "eager" and params["model"] == "digits_mlp"
    assert tags["ptflow.version"] == ptflow.__version__
    note = tags["mlflow.note.content"]
    head = note.splitlines()[0]
    assert head.startswith("**int8_dynamic+eager** · speedup ")
    # rounded as ptflow prints it; the metric keeps the raw value
    assert f"{m['benchmark/speedup_p50']:.2f}x [{m['benchmark/speedup_ci_low']:.2f}, " \
           f"{m['benchmark/speedup_ci_high']:.2f}] over 5 processes" in head
    assert f"top1_accuracy {m['benchmark/top1_accuracy_delta']:+.4f}" in head
    assert f"timings {tags['benchmark.stability']}" in head
    client = MlflowClient(tracking_uri=default_run.tracking_uri)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.name == "int8_dynamic-eager-pt2"


def test_export_manifest_matches_the_file(default_run):
    (manifest_path,) = default_run.outputs.glob("runs/*/*/export/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    (entry,) = manifest["files"]
    exported = manifest_path.with_name(entry["file"])
    assert entry["format"] == "pt2" and entry["load"] and "torch" in entry["versions"]
    assert entry["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert entry["size_bytes"] == exported.stat().st_size
    assert manifest["inputs"][0]["shape"] == ["batch", 64]
    assert [entry["stage"] for entry in manifest["lineage"]] == ["load", "validate", "quantize", "compile",
                                                                "benchmark"]
    assert "benchmark.speedup_p50" in manifest["metrics"] and len(manifest["config_hash"]) == 64
    assert not list(manifest_path.parent.glob(".*partial*"))   # nothing half-written left behind


def test_multirun_records_each_job_in_one_experiment(ptflow):
    result = ptflow("-m", "quantize=none,int8_dynamic", "benchmark=quick", "pipeline=[load,validate,quantize,benchmark]")
    assert result.code == 0, result.stderr
    assert "2/2 job(s)" in result.stdout and "2 finished, 0 failed" in result.stdout
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  job "))
    header, rows = lines[at], lines[at + 1:at + 3]
    assert header.split()[:3] == ["job", "status", "state"]
    states = {"stable", "unstable", "invalid", "rejected"}   # what each finished job's figures are worth
    assert all(row.split()[1] == "FINISHED" and row.split()[2] in states for row in rows), rows
    runs = mlflow_runs(result)
    assert sorted(r.data.params["quantize.method"] for r in runs) == ["int8_dynamic", "none"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["ptflow.sweep"] for r in runs}) == 1
    assert len({r.info.experiment_id for r in runs}) == 1
    assert mlflow_runs(result, "Default") == []           # no job fell into experiment 0


def test_latency_only_pipeline_without_tracking(ptflow):
    result = ptflow("experiment=latency_only", "tracking=none", "benchmark=quick", "quantize=none")
    assert result.code == 0, result.stderr
    assert not (result.outputs / "mlflow.db").exists()
    (summary_path,) = result.outputs.glob("runs/*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert list(summary["stages_s"]) == ["load", "validate", "quantize", "compile", "benchmark"]
    assert summary["exports"] == [] and summary["mlflow"]["run_id"] is None
    latency = summary["latency_ms"]
    assert summary["speedup_p50"] == pytest.approx(latency["baseline"]["p50"] / latency["optimized"]["p50"])
