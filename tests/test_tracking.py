"""MLflow set-up: schema and experiment created once, idempotently, under outputs/."""
from __future__ import annotations

from pathlib import Path

from ptflow.tracking import TrackingConfig, prepare, store_uri


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


def test_explicit_uri_is_used_as_given(tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert store_uri(TrackingConfig(uri=uri), Path("ignored")) == uri
    prepare(TrackingConfig(uri=uri), tmp_path / "out")
    assert (tmp_path / "elsewhere.db").is_file()
