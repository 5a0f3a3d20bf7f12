"""MLflow set-up: schema and experiment created once, idempotently, under outputs/."""
from __future__ import annotations

from pathlib import Path

from ptflow.runs.tracking import TrackingConfig, prepare, store_uri


def test_prepare_creates_the_store_and_experiment_once(tmp_path):
    from mlflow.tracking import MlflowClient

    config = TrackingConfig(experiment="exp-a")
    first = prepare(config, tmp_path / "outputs")
    assert prepare(config, tmp_path / "outputs") == first
    uri = store_uri(config, tmp_path / "outputs")
    assert uri == f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').resolve()}"
    experiment = MlflowClient(tracking_uri=uri).get_experiment(first)
    assert experiment.artifact_location == (tmp_path / "outputs" / "mlartifacts").resolve().as_uri()


def test_prepare_restores_a_deleted_experiment(tmp_path):
    from mlflow.tracking import MlflowClient

    config = TrackingConfig(experiment="exp-b")
    experiment_id = prepare(config, tmp_path)
    client = MlflowClient(tracking_uri=store_uri(config, tmp_path))
    client.delete_experiment(experiment_id)
    assert prepare(config, tmp_path) == experiment_id
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"


def test_the_experiment_is_a_classic_ml_one_unless_its_owner_chose_a_kind(tmp_path):
    """MLflow 3's UI opens a classic ML experiment on its runs table (not the GenAI overview)."""
    from mlflow.tracking import MlflowClient

    config = TrackingConfig(experiment="exp-kind")
    uri = store_uri(config, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    made = prepare(config, tmp_path)
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-before")               # an experiment without a kind gets one
    assert prepare(TrackingConfig(experiment="made-before"), tmp_path) == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    theirs = client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    assert prepare(TrackingConfig(experiment="genai"), tmp_path) == theirs   # a kind someone chose stays
    assert client.get_experiment(theirs).tags["mlflow.experimentKind"] == "genai_development"


def test_explicit_uri_is_used_as_given(tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert store_uri(TrackingConfig(uri=uri), Path("ignored")) == uri
    prepare(TrackingConfig(uri=uri), tmp_path / "out")
    assert (tmp_path / "elsewhere.db").is_file()


def test_store_and_experiment_problems_name_their_own_keys(tmp_path, monkeypatch):
    from ptflow.runs import tracking

    def refuse(client, name, outputs_dir, uri):
        raise RuntimeError(f"experiment {name!r} is locked by policy")

    monkeypatch.setattr(tracking, "_experiment_id", refuse)
    experiment_id, (problem,) = tracking.prepare_or_problem(TrackingConfig(experiment="mine"), tmp_path)
    assert experiment_id is None and problem.key == "tracking.experiment" and problem.found == "mine"
    assert "locked by policy" in problem.hint

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mlflow.db").write_bytes(b"not sqlite at all\n" * 100)
    experiment_id, (problem,) = tracking.prepare_or_problem(TrackingConfig(), tmp_path / "bad")
    assert problem.key == "outputs_dir" and "not a database" in problem.hint
    uri = f"sqlite:///{tmp_path / 'bad' / 'mlflow.db'}"
    experiment_id, (problem,) = tracking.prepare_or_problem(TrackingConfig(uri=uri), tmp_path)
    assert problem.key == "tracking.uri" and problem.found == uri


def test_a_dead_http_store_is_judged_in_seconds():
    import time

    from ptflow.runs import tracking
    from tests.fault_files import free_port

    started = time.monotonic()
    (problem,) = tracking.check_store(TrackingConfig(uri=f"http://127.0.0.1:{free_port()}"), Path("."))
    assert time.monotonic() - started < 2 * tracking.PROBE_TRIES * tracking.PROBE_TIMEOUT_S
    assert problem.key == "tracking.uri" and "Connection refused" in problem.hint
