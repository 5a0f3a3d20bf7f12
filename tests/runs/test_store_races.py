"""Jobs of a parallel sweep write one shared store at once: a write that loses a race with
another job over a shared row is made again, not reported as a tracking failure.

MLflow's ``log_inputs`` looks an experiment's dataset up and inserts it when missing, in one
transaction; two jobs logging the same eval data can both miss it, and the later insert fails
on the unique key (on PostgreSQL behind ``mlflow server``: BAD_REQUEST, "duplicate key value
violates unique constraint dataset_pk"). Here the other job is simulated deterministically:
the same dataset row is inserted, through another connection, just before MLflow's insert.
"""
from __future__ import annotations

import sqlite3
import uuid

import pytest

from ptflow.app import job
from ptflow.runs.mlflow_calls import lost_insert_race, retry_lost_race
from ptflow.runs.naming import JobInfo
from ptflow.runs.tracking import sqlite_path
from tests.conftest import compose

OVERRIDES = ("benchmark=quick", "benchmark.iters=10", "benchmark.warmup=1", "device.threads=1",
             "pipeline=[load,validate,benchmark]")


@pytest.fixture
def another_job_first(monkeypatch):
    """Before MLflow's first dataset insert, "another job" inserts the same dataset row."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    fired: list[str] = []

    def before_flush(session, _context, _instances):
        new = [o for o in session.new if isinstance(o, SqlDataset)]
        if not new or fired:
            return
        row = new[0]
        db = sqlite_path(str(session.get_bind().url))
        fired.append(uuid.uuid4().hex)
        with sqlite3.connect(db, timeout=20) as other:
            other.execute("INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, dataset_source_type, "
                          "dataset_source, dataset_schema, dataset_profile) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (fired[0], row.experiment_id, row.name, row.digest, row.dataset_source_type,
                           row.dataset_source, row.dataset_schema, row.dataset_profile))

    event.listen(Session, "before_flush", before_flush)
    yield fired
    event.remove(Session, "before_flush", before_flush)


def test_a_dataset_insert_lost_to_another_job_is_retried_and_the_run_stays_complete(another_job_first, tmp_path):
    from mlflow.tracking import MlflowClient

    overrides = (*OVERRIDES, f"outputs_dir={tmp_path / 'outputs'}")
    config, choices = compose(*overrides)
    where = tmp_path / "run"
    record = job.run(config, "{}\n", choices, list(overrides), where, JobInfo(overrides=overrides, run_dir=str(where)))
    assert another_job_first, "the simulated job never inserted: MLflow logged no dataset"
    assert record.status == "FINISHED" and record.tracking.error is None, record.tracking.error
    run = MlflowClient(tracking_uri=record.tracking.uri).get_run(record.tracking.run_id)
    assert "ptflow.incomplete" not in run.data.tags
    (logged,) = run.inputs.dataset_inputs          # linked to the row the other job wrote
    rows = sqlite3.connect(sqlite_path(record.tracking.uri)).execute("SELECT dataset_uuid, digest FROM datasets")
    assert list(rows) == [(another_job_first[0], logged.dataset.digest)]


def test_the_lost_race_is_told_from_other_store_errors():
    postgres = ('RestException: BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates '
                'unique constraint "dataset_pk"')
    sqlite = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name"
    mysql = "(pymysql.err.IntegrityError) (1062, \"Duplicate entry '1-digits' for key 'datasets.PRIMARY'\")"
    assert all(lost_insert_race(Exception(m)) for m in (postgres, sqlite, mysql))
    assert not lost_insert_race(Exception("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found"))
    assert not lost_insert_race(OSError(28, "No space left on device"))


def test_only_a_lost_race_is_retried_and_not_for_ever():
    calls: list[int] = []

    def lost(n: int):
        calls.append(n)
        raise RuntimeError('duplicate key value violates unique constraint "dataset_pk"')

    with pytest.raises(RuntimeError, match="dataset_pk"):
        retry_lost_race(lost, 1, attempts=3, pause_s=0)
    assert calls == [1, 1, 1]

    calls.clear()

    def down(n: int):
        calls.append(n)
        raise ConnectionError("connection refused")

    with pytest.raises(ConnectionError):
        retry_lost_race(down, 2, attempts=3, pause_s=0)
    assert calls == [2]

    outcomes = iter([RuntimeError("UNIQUE constraint failed: datasets.name"), None])

    def once(n: int):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return n * 10

    assert retry_lost_race(once, 4, pause_s=0) == 40
