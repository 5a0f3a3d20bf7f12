"""ptflow-compare --parent: a unique prefix of the parent run id, as the other commands take
one, and a job's run id refused with its sweep and its parent named — against a sqlite store."""
from __future__ import annotations

import pytest

from ptflow.review.compare_cli import run as cli

SWEEP = "eeee5555" + "0" * 24


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("compare-parent")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("ptflow", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment, run_name="sweep 2 job(s) @12-00-00", start_time=1_000,
                               tags={"ptflow.sweep_parent": "true", "ptflow.sweep_id": SWEEP}).info.run_id
    jobs = []
    for job, quantize in enumerate(("none", "int8_dynamic")):
        run = client.create_run(experiment, run_name=f"digits_mlp-{quantize}-eager @12-00-00#{job}",
                                start_time=1_001 + job,
                                tags={"mlflow.parentRunId": parent, "ptflow.sweep_id": SWEEP, "quantize": quantize})
        client.log_batch(run.info.run_id, metrics=[Metric("benchmark/speedup_p50", 1.0 + job, 1_001, 0)])
        client.set_terminated(run.info.run_id, "FINISHED")
        jobs.append(run.info.run_id)
    single = client.create_run(experiment, run_name="digits_mlp-none-eager @13-00-00", start_time=2_000).info.run_id
    client.set_terminated(single, "FINISHED")
    return {"uri": uri, "parent": parent, "jobs": jobs, "single": single}


@pytest.fixture()
def env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def test_parent_takes_a_unique_prefix(store, env, capsys):
    assert cli(["--tracking-uri", store["uri"], "--parent", store["parent"][:8]]) == 0
    out = capsys.readouterr().out
    assert f"parent run {store['parent']}" in out and "int8_dynamic" in out


def test_a_job_run_id_is_not_a_parent_and_its_parent_is_named(store, env, capsys):
    assert cli(["--tracking-uri", store["uri"], "--parent", store["jobs"][0]]) == 2
    err = capsys.readouterr().err
    assert f"is a job of sweep {SWEEP[:8]}, not a sweep's parent run" in err
    assert f"its parent run is {store['parent']}" in err
    assert cli(["--tracking-uri", store["uri"], "--parent", store["jobs"][1][:10]]) == 2   # a job's prefix too
    assert "is a job of sweep" in capsys.readouterr().err


def test_a_single_run_or_a_too_short_prefix_is_refused(store, env, capsys):
    assert cli(["--tracking-uri", store["uri"], "--parent", store["single"][:8]]) == 2
    assert "is a single run, not a sweep's parent run" in capsys.readouterr().err
    assert cli(["--tracking-uri", store["uri"], "--parent", store["parent"][:4]]) == 2   # under 6 characters
    assert "is no run in this store" in capsys.readouterr().err
