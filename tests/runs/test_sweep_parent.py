"""A sweep in MLflow: one parent run per sweep, every job nested under it, the counts and
the comparison on the parent; and the stage cache shared by its jobs."""
from __future__ import annotations

import json

import pytest

from tests.conftest import STEADY, mlflow_runs

FAST = ("pipeline=[load,validate,quantize,benchmark]", "benchmark=quick", "benchmark.plots=false")


def _client(result):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=result.tracking_uri)


def _parent(result):
    (parent,) = [r for r in mlflow_runs(result, parents=True) if r.data.tags.get("ptflow.sweep_parent") == "true"]
    return parent


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory):
    """Two jobs: one finishes, one fails at run time (an output shape the model does not give)."""
    from tests.conftest import run_cli

    return run_cli(tmp_path_factory.mktemp("mixed"), "-m", *FAST, "quantize=int8_dynamic",
                   "validate.output_shape=[null,10],[null,11]", *STEADY)


def test_every_job_is_a_child_of_one_parent_run(mixed_sweep):
    assert mixed_sweep.code == 1, mixed_sweep.stderr    # one job failed
    parent, jobs = _parent(mixed_sweep), mlflow_runs(mixed_sweep)
    assert len(jobs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {r.info.experiment_id for r in jobs} == {parent.info.experiment_id}
    assert parent.data.tags["ptflow.sweep_id"] == jobs[0].data.tags["ptflow.sweep_id"]
    assert parent.data.tags["ptflow.sweep"] == jobs[0].data.tags["ptflow.sweep"]
    assert parent.data.tags["ptflow.command"].startswith("ptflow -m ")
    assert parent.info.start_time <= min(r.info.start_time for r in jobs)   # made before any job started
    assert f"parent MLflow run {parent.info.run_id} ended FINISHED" in mixed_sweep.stdout


def test_the_parent_counts_finished_and_failed_and_ends_finished(mixed_sweep):
    parent = _parent(mixed_sweep)
    assert parent.info.status == "FINISHED"     # one job finished: the sweep produced something
    metrics = parent.data.metrics
    assert (metrics["sweep/expected"], metrics["sweep/jobs"]) == (2, 2)
    assert (metrics["sweep/finished"], metrics["sweep/failed"], metrics["sweep/killed"]) == (1, 1, 0)
    statuses = sorted(r.info.status for r in mlflow_runs(mixed_sweep))
    assert statuses == ["FAILED", "FINISHED"]


def test_the_parent_holds_the_comparison_and_the_sweep_config(mixed_sweep):
    parent = _parent(mixed_sweep)
    client = _client(mixed_sweep)
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"multirun.yaml", "overrides.txt", "compare"} <= top
    compared = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert compared == {"compare/compare.csv", "compare/compare.md", "compare/pareto.png"}
    csv = client.download_artifacts(parent.info.run_id, "compare/compare.csv", str(mixed_sweep.cwd / "dl"))
    text = open(csv, encoding="utf-8").read()
    assert all(r.info.run_id in text for r in mlflow_runs(mixed_sweep))   # every job is a row


def test_the_parent_names_the_pick_and_keeps_the_whole_command_line(mixed_sweep):
    """What the MLflow UI shows on the parent: the pick under the jobs' accuracy gate on top of
    its description, tags and metrics for it, the sweep's overrides as params."""
    parent, client = _parent(mixed_sweep), _client(mixed_sweep)
    (done,) = [r for r in mlflow_runs(mixed_sweep) if r.info.status == "FINISHED"]
    tags, eid = parent.data.tags, parent.info.experiment_id
    assert tags["ptflow.best_run_id"] == done.info.run_id and tags["ptflow.best_recipe"] == "int8_dynamic"
    assert tags["ptflow.pick.budget"] == "0.01 (accuracy.max_drop)"
    note = tags["mlflow.note.content"]
    assert note.startswith("## Pick: **int8_dynamic** (within a drop of 0.01, from accuracy.max_drop)")
    assert f"(#/experiments/{eid}/runs/{done.info.run_id}?workflowType=machine_learning)" in note
    assert "### 2 run(s), ranked by speedup" in note
    assert "not ranked: " in note and "FAILED" in note                      # the failed job is a row too
    assert parent.data.metrics["best/speedup_p50"] == done.data.metrics["benchmark/speedup_p50"]
    assert parent.data.metrics["best/metric_delta"] == done.data.metrics["benchmark/top1_accuracy_delta"]
    assert parent.data.params["validate.output_shape"] == "[null,10],[null,11]"
    assert parent.data.params["benchmark"] == "quick" and "hydra.mode" not in parent.data.params
    assert tags["ptflow.command"].endswith("benchmark.invalid_dispersion=1e6")   # as typed, in order
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"command.txt", "hydra_overrides.txt", "multirun.yaml"} <= top
    assert "sweep: pick within a drop of 0.01 (accuracy.max_drop): int8_dynamic" in mixed_sweep.stdout


def test_a_sweep_where_no_job_finishes_ends_its_parent_failed(ptflow):
    result = ptflow("-m", "pipeline=[load,validate]", "validate.output_shape=[null,11],[null,12]")
    assert result.code == 1
    parent = _parent(result)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["sweep/finished"] == 0 and parent.data.metrics["sweep/failed"] == 2


def test_sweep_jobs_share_the_loaded_model_and_the_baseline_reference(mixed_sweep):
    """Job 0 loads and validates; job 1 (same model, data, seed, device) reuses both."""
    records = sorted(mixed_sweep.outputs.glob("multirun/*/*/[0-9]/ptflow_result.json"))
    first, second = (json.loads(p.read_text()) for p in records)
    assert first["metrics"]["cache.load_hit"] == 0.0
    assert second["metrics"]["cache.load_hit"] == 1.0
    entries = list((mixed_sweep.outputs / "cache" / "stages" / "validate").iterdir())
    # the validate configs differ (output_shape): job 1 has its own key, and its validate
    # failed, so only job 0's baseline was written — a failing stage leaves no entry
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert second["metrics"].get("cache.validate_hit") is None and second["status"] == "FAILED"
    (job,) = [r for r in mlflow_runs(mixed_sweep) if r.info.status == "FINISHED"]
    assert job.data.tags["ptflow.cache.load"] in ("hit", "miss")
    assert "cache/load_hit" in job.data.metrics


def test_a_second_process_reuses_the_baseline_from_disk_and_cache_off_bypasses_it(ptflow):
    first = ptflow(*FAST)
    second = ptflow(*FAST)
    off = ptflow(*FAST, "cache=off")
    assert (first.code, second.code, off.code) == (0, 0, 0), off.stderr
    assert "stage cache         load miss, validate miss" in first.stdout
    assert "stage cache         load miss, validate hit" in second.stdout   # a new process: the disk entry
    assert "stage cache" not in off.stdout
    runs = sorted(mlflow_runs(first), key=lambda r: r.info.start_time)
    assert [r.data.tags.get("ptflow.cache.validate") for r in runs] == ["miss", "hit", None]
    # the same baseline, whether computed or read back
    assert len({r.data.metrics["validate/top1_accuracy"] for r in runs}) == 1
    assert len({r.data.metrics["benchmark/top1_accuracy_delta"] for r in runs}) == 1


def test_a_corrupt_cache_entry_is_rebuilt_never_trusted(ptflow, tmp_path):
    assert ptflow(*FAST).code == 0
    (entry,) = (tmp_path / "outputs" / "cache" / "stages" / "validate").iterdir()
    with open(entry / "tensors.safetensors", "r+b") as f:   # flip bytes inside the tensor data
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    result = ptflow(*FAST)
    assert result.code == 0, result.stderr
    assert "validate rebuilt" in result.stdout
    assert "was corrupt" in result.stderr and "rebuilt by this run" in result.stderr
    latest = max(mlflow_runs(result), key=lambda r: r.info.start_time)
    assert latest.data.tags["ptflow.cache.validate"] == "rebuilt"
    assert "ptflow.warning.cache.validate" in latest.data.tags
    again = ptflow(*FAST)
    assert "validate hit" in again.stdout   # the rebuilt entry is sound


def test_reproducing_a_parent_run_names_its_jobs_instead(mixed_sweep):
    import subprocess
    import sys

    parent = _parent(mixed_sweep)
    proc = subprocess.run([sys.executable, "-m", "ptflow.review.reproduce", parent.info.run_id], cwd=mixed_sweep.cwd,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "is the parent run of sweep" in proc.stderr and "ptflow-compare --parent" in proc.stderr
    assert all(r.info.run_id in proc.stderr for r in mlflow_runs(mixed_sweep))


def test_compare_picks_under_a_budget_registers_the_pick_and_gates_on_none(ptflow, tmp_path):
    """The loop a user runs: sweep, ptflow-compare --max-accuracy-drop --register, and a CI gate."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    sweep = ptflow("-m", "benchmark=quick", "benchmark.plots=false", "quantize=none,int8_dynamic", *STEADY)
    assert sweep.code == 0, sweep.stderr

    def compare(*args):
        return subprocess.run([sys.executable, "-m", "ptflow.review.compare_cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    picked = compare("--max-accuracy-drop", "0.01", "--register", "digits-clf")
    assert picked.returncode == 0, picked.stderr
    jobs = {r.info.run_id: r for r in mlflow_runs(sweep)}
    assert "reproduce exactly: ptflow-reproduce " in picked.stdout
    chosen = picked.stdout.split("reproduce exactly: ptflow-reproduce ")[1].split()[0]
    assert chosen in jobs
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    (version,) = client.search_model_versions("name = 'digits-clf'")
    assert version.tags["ptflow.run_id"] == chosen
    assert f"models:/digits-clf/{version.version}" in picked.stdout
    assert version.source == jobs[chosen].data.tags["ptflow.model.pt2"] or \
        version.model_id == jobs[chosen].data.tags["ptflow.model.pt2"].removeprefix("models:/")
    # nothing qualifies under an impossible budget: exit 1, and nothing more is registered
    none = compare("--filter", "tags.quantize != 'none'", "--max-accuracy-drop", "0", "--register", "digits-clf")
    assert none.returncode == 1 and "registered" not in none.stdout
    assert len(client.search_model_versions("name = 'digits-clf'")) == 1
