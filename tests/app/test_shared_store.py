"""The shared store the docs tell teams to run: `mlflow server` on a real PostgreSQL database.

A parallel sweep (joblib, 8 jobs) logs into it, then `ptflow-compare` ranks and picks from it,
as from sqlite: every run, metric and artifact, the parent and the pick are checked through
the server, and the rows are checked in PostgreSQL itself (the server really used it). The
test starts its own PostgreSQL cluster (tests/postgres_server.py) and skips, with the reason,
where none can be started."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.app.test_cluster import _assert_job_runs, _assert_parent_contract, _ptflow, _runs, _split_parent, _sweep_dir
from tests.conftest import STEADY
from tests.mlflow_server import Server
from tests.postgres_server import Postgres, Unavailable

JOBS = 8


@pytest.fixture
def postgres():
    database = Postgres()
    try:
        url = database.start()
    except Unavailable as why:
        pytest.skip(f"no PostgreSQL server: {why}")
    yield url
    database.stop()


def _rows(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


@pytest.mark.slow
def test_a_parallel_sweep_and_ptflow_compare_on_mlflow_server_over_postgresql(postgres, tmp_path):
    server = Server(tmp_path / "server", backend=postgres)
    server.start()
    try:
        work = tmp_path / "work"
        work.mkdir()
        result = _ptflow(work, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "benchmark=quick",
                         "device.threads=1", "quantize=none,int8_dynamic,bf16,int8_weight_only",
                         "seed=0,1", f"tracking.uri={server.uri}", *STEADY)
        assert result.returncode == 0, result.stderr[-4000:]
        assert f"sweep: {JOBS}/{JOBS} job(s)" in result.stdout and f"{JOBS} finished, 0 failed" in result.stdout
        client, runs = _runs(server.uri)
        parent, jobs = _split_parent(runs)
        _assert_job_runs(client, jobs, JOBS, "files/export.pt2")
        _assert_parent_contract(client, runs, JOBS, _sweep_dir(work))
        for run in jobs:   # every logged model is there, named after its recipe
            (model,) = [v for k, v in run.data.tags.items() if k == "ptflow.model.pt2"]
            logged = client.get_logged_model(model.removeprefix("models:/"))
            assert logged.name == f"{run.data.tags['recipe'].replace('+', '-')}-pt2", logged.name
        # the pick, made when the sweep ended, under the jobs' gate (accuracy.max_drop 0.01)
        best = parent.data.tags["ptflow.best_run_id"]
        assert best in {r.info.run_id for r in jobs} and parent.data.tags["ptflow.pick.budget"].startswith("0.01")
        assert parent.data.tags["mlflow.note.content"].startswith("## Pick: **")
        assert parent.data.params["hydra.launcher.n_jobs"] == "4"
        # the rows are in PostgreSQL: the server used it, not a file beside it
        ids = {r[0] for r in _rows(postgres, "SELECT run_uuid FROM runs")}
        assert ids == {r.info.run_id for r in runs}
        (count,) = _rows(postgres, "SELECT count(*) FROM metrics WHERE key = 'benchmark/speedup_p50'")[0]
        assert count == JOBS
        # ptflow-compare reads the server as it reads sqlite, and records its pick on the parent
        compared = subprocess.run([sys.executable, "-m", "ptflow.review.compare_cli", "--tracking-uri", server.uri,
                                   "--max-accuracy-drop", "0"], cwd=work, capture_output=True, text=True, timeout=300)
        assert compared.returncode in (0, 1), compared.stderr
        assert all(r.info.run_id[:8] in compared.stdout for r in jobs)
        assert f"recorded on the sweep's parent run {parent.info.run_id}" in compared.stdout
        again = client.get_run(parent.info.run_id)
        assert again.data.tags["ptflow.pick.budget"] == "0 (ptflow-compare)"
        assert again.data.tags["ptflow.pick.by"].startswith("picked by ptflow-compare --max-accuracy-drop 0,")
        if compared.returncode == 0:    # a recipe with no drop at all (none, bf16 on most CPUs)
            picked = client.get_run(again.data.tags["ptflow.best_run_id"])
            assert picked.data.metrics["benchmark/top1_accuracy_delta"] >= 0
        else:
            assert "ptflow.best_run_id" not in again.data.tags
    finally:
        server.stop()
