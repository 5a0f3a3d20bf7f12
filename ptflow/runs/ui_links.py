"""Addresses of ptflow's runs in the MLflow UI.

MLflow 3.17's UI opens every experiment on its GenAI pages (traces, evaluations) unless the
address says ``workflowType=machine_learning`` or the browser's own toggle (GenAI / Model
training) was switched once: the experiment's ``mlflow.experimentKind`` tag, which ptflow sets,
no longer decides it. Every link ptflow prints or writes into a description carries it, so it
opens on the runs table and the run pages a classic ML user expects.
"""
from __future__ import annotations

ML_VIEW = "workflowType=machine_learning"
MLFLOW_UI = "http://127.0.0.1:5000"     # where `mlflow ui` serves by default


def base(tracking_uri: str | None) -> str:
    """The UI's address: a tracking server's own, else `mlflow ui`'s default."""
    uri = tracking_uri or ""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI


def run_path(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def model_path(experiment_id: str, model_id: str) -> str:
    return f"#/experiments/{experiment_id}/models/{model_id}?{ML_VIEW}"


def runs_path(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?{ML_VIEW}"


def run_page(tracking_uri: str | None, experiment_id: str, run_id: str) -> str:
    return f"{base(tracking_uri)}/{run_path(experiment_id, run_id)}"
