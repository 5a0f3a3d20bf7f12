"""The run lifecycle with real processes: many at once, stopped sweeps, vanished processes,
and a tracking server that dies mid-run. Nothing measured is lost; every record is true."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
QUICK = ("benchmark=quick",)
LONG_BENCHMARK = ("experiment=latency_only", "benchmark.iters=200000")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("PTFLOW_TEST_FAULT", None)
    return env


def _start(cwd: Path, *args: str, group: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ptflow", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=group)


def _runs_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from ptflow.runs.runs_cli import main; main()", *args],
                          cwd=cwd, env=_env(), text=True, capture_output=True, timeout=300)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _all_runs(uri: str, experiment: str = "ptflow", parents: bool = False):
    """The job runs (and with `parents`, the sweeps' parent runs too)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id])
    return runs if parents else [r for r in runs if r.data.tags.get("ptflow.sweep_parent") != "true"]


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("ptflow_result.json"))]


def _wait_for_stage(root: Path, stage: str, count: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sum(r.get("stage") == stage for r in _records(root)) >= count:
                return
        except ValueError:   # a record read while being renamed into place
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {count} run(s) reached stage {stage!r} in {timeout} s")


def _sqlite(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}"


# -- concurrency -----------------------------------------------------------------------

def test_twelve_processes_into_one_outputs_dir_lose_nothing(tmp_path):
    """6 at once into a fresh dir (schema and experiment races), then 6 into the existing one."""
    for batch in (range(0, 6), range(6, 12)):
        procs = [_start(tmp_path, *QUICK, "quantize=none", f"seed={n}") for n in batch]
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
    runs = _all_runs(_sqlite(tmp_path))
    assert len(runs) == 12 and all(r.info.status == "FINISHED" for r in runs)
    assert _all_runs(_sqlite(tmp_path), "Default") == []        # none fell into experiment 0
    run_dirs = {r.data.tags["ptflow.run_dir"] for r in runs}
    assert len(run_dirs) == 12
    assert sorted(int(r.data.params["seed"]) for r in runs) == list(range(12))
    client = _client(_sqlite(tmp_path))
    for run in runs:   # each run's artifacts are its own files, not a neighbour's
        run_dir = Path(run.data.tags["ptflow.run_dir"])
        record = json.loads((run_dir / "ptflow_result.json").read_text())
        assert record["config"]["seed"] == int(run.data.params["seed"])
        assert record["tracking"]["run_id"] == run.info.run_id and record["tracking"]["complete"]
        for artifact, local in (("summary.json", "summary.json"),
                                ("files/export.manifest/manifest.json", "export/manifest.json")):
            logged = Path(client.download_artifacts(run.info.run_id, artifact, str(tmp_path / "dl" / run.info.run_id)))
            assert logged.read_bytes() == (run_dir / local).read_bytes()
    later = _start(tmp_path, "experiment=latency_only", *QUICK)
    later.communicate(timeout=600)
    assert later.returncode == 0
    assert len(_all_runs(_sqlite(tmp_path))) == 13


# -- signals across processes ------------------------------------------------------------

def test_ctrl_c_during_a_joblib_sweep_ends_every_job_killed(tmp_path):
    proc = _start(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *LONG_BENCHMARK,
                  "quantize=none,int8_dynamic", group=True)
    _wait_for_stage(tmp_path / "outputs", "benchmark", count=2)
    os.killpg(proc.pid, signal.SIGINT)            # what Ctrl-C in a terminal does: the whole group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "sweep stopped by SIGINT" in err and "2 ended KILLED" in err and "Traceback" not in err
    runs = _all_runs(_sqlite(tmp_path))
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}
    assert all("SIGINT" in r.data.tags["ptflow.kill_reason"] for r in runs)
    assert {(r["status"], r["exit_code"]) for r in _records(tmp_path / "outputs")} == {("KILLED", 130)}
    ids = {r.info.run_id for r in runs}
    (parent,) = [r for r in _all_runs(_sqlite(tmp_path), parents=True) if r.info.run_id not in ids]
    assert parent.info.status == "KILLED" and parent.data.metrics["sweep/killed"] == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


def test_sigterm_to_the_launcher_of_a_joblib_sweep_closes_its_workers_runs(tmp_path):
    proc = _start(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *LONG_BENCHMARK,
                  "quantize=none,int8_dynamic")
    _wait_for_stage(tmp_path / "outputs", "benchmark", count=2)
    proc.send_signal(signal.SIGTERM)              # `kill PID`: only the launcher hears it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    runs = _all_runs(_sqlite(tmp_path))
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all("stopped by SIGTERM" in r.data.tags["ptflow.kill_reason"] for r in runs)
    assert {r["status"] for r in _records(tmp_path / "outputs")} == {"KILLED"}


def test_sigterm_stops_a_sequential_sweep_before_its_next_job(tmp_path):
    proc = _start(tmp_path, "-m", *LONG_BENCHMARK, "quantize=none,int8_dynamic")
    _wait_for_stage(tmp_path / "outputs", "benchmark")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (run,) = _all_runs(_sqlite(tmp_path))         # the second job never started
    assert run.info.status == "KILLED"
    assert run.data.tags["ptflow.kill_reason"] == "SIGTERM received during stage 'benchmark'"


def test_a_run_killed_without_a_word_is_closed_by_the_next_ptflow(tmp_path):
    proc = _start(tmp_path, *LONG_BENCHMARK)
    _wait_for_stage(tmp_path / "outputs", "benchmark")
    proc.kill()                                   # SIGKILL: no clean-up can run
    proc.communicate(timeout=60)
    (run,) = _all_runs(_sqlite(tmp_path))
    assert run.info.status == "RUNNING"           # what MLflow shows until someone closes it
    later = _start(tmp_path, "experiment=latency_only", *QUICK)
    out, err = later.communicate(timeout=600)
    assert later.returncode == 0, err
    assert "closed 1 earlier run(s) whose process on this host is gone" in err
    stale = _client(_sqlite(tmp_path)).get_run(run.info.run_id)
    assert stale.info.status == "KILLED"
    assert f"process {proc.pid}" in stale.data.tags["ptflow.kill_reason"]
    record = json.loads((Path(stale.data.tags["ptflow.run_dir"]) / "ptflow_result.json").read_text())
    assert record["status"] == "KILLED" and "SIGKILL" in record["reason"]


def test_close_stale_closes_records_of_runs_without_tracking(tmp_path):
    proc = _start(tmp_path, *LONG_BENCHMARK, "tracking=none")
    _wait_for_stage(tmp_path / "outputs", "benchmark")
    proc.kill()
    proc.communicate(timeout=60)
    result = _runs_cli(tmp_path, "close-stale")
    assert result.returncode == 0, result.stderr
    assert "1 run record(s)" in result.stdout
    (record,) = _records(tmp_path / "outputs")
    assert record["status"] == "KILLED" and "during stage 'benchmark'" in record["reason"]


# -- a tracking server that dies mid-run --------------------------------------------------

def test_tracking_server_dying_mid_run_costs_no_result_and_relog_completes_it(tmp_path, server):
    work = tmp_path / "work"
    work.mkdir()
    # one process: the seconds after the stop must be the run's own logging, not 4 more
    # processes timing 3000 samples each (~40 s apiece here)
    proc = _start(work, f"tracking.uri={server.uri}", "benchmark.iters=3000", "benchmark.repeats=1")
    _wait_for_stage(work / "outputs", "benchmark")
    server.stop()
    started = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err                       # finished, MLflow record incomplete
    assert time.monotonic() - started < 120                # bounded retries, not minutes per call
    assert "ptflow summary" in out and "INCOMPLETE" in out
    assert f"open the UI         {server.uri}" in out       # a server's own URL, not `mlflow ui`
    assert f"its page            {server.uri}/#/experiments/" in out and "?workflowType=machine_learning" in out
    assert "MLflow record of this run is incomplete" in err and "ptflow-runs relog" in err
    (record,) = _records(work / "outputs")
    run_dir = Path(record["run_dir"])
    assert record["status"] == "FINISHED" and not record["tracking"]["complete"]
    assert (run_dir / "summary.json").is_file() and (run_dir / "export" / "manifest.json").is_file()
    assert "benchmark.speedup_p50" in record["metrics"]

    server.start()                                         # the same store comes back
    result = _runs_cli(work, "relog", str(run_dir))
    assert result.returncode == 0, result.stderr
    (run,) = _all_runs(server.uri)
    assert run.info.run_id == record["tracking"]["run_id"]   # the same run, completed
    assert run.info.status == "FINISHED"
    assert run.data.metrics["benchmark/speedup_p50"] == pytest.approx(record["metrics"]["benchmark.speedup_p50"])
    names = {a.path for a in _client(server.uri).list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "files"} <= names
    assert json.loads((run_dir / "ptflow_result.json").read_text())["tracking"]["complete"] is True


def test_relog_into_another_store_creates_the_run_there(tmp_path):
    proc = _start(tmp_path, "experiment=latency_only", *QUICK, "tracking=none")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    (record,) = _records(tmp_path / "outputs")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = _runs_cli(tmp_path, "relog", record["run_dir"], "--tracking-uri", other)
    assert result.returncode == 0, result.stderr
    (run,) = _all_runs(other)
    assert run.info.status == "FINISHED" and run.data.params["seed"] == "0"
    assert run.data.metrics["benchmark/speedup_p50"] == pytest.approx(record["metrics"]["benchmark.speedup_p50"])


# -- sweeps bigger than any sample ----------------------------------------------------------

def test_every_job_of_a_big_sweep_is_checked(tmp_path):
    seeds = ",".join(map(str, range(300))) + f",{2**70}"   # only the 301st job is invalid
    result = subprocess.run([sys.executable, "-m", "ptflow", "-m", f"seed={seeds}", "dry_run=true"],
                            cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "seed" in result.stderr and f"in job(s): seed={2**70}" in result.stderr


def test_a_joblib_sweep_into_a_fresh_dir_records_every_job(tmp_path):
    proc = _start(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=latency_only",
                  *QUICK, "quantize=none,int8_dynamic")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "2/2 job(s)" in out and "2 finished, 0 failed" in out
    runs = _all_runs(_sqlite(tmp_path))
    assert sorted(r.data.params["quantize.method"] for r in runs) == ["int8_dynamic", "none"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ptflow.process"] for r in runs}) == 2        # two worker processes
    assert {r["status"] for r in _records(tmp_path / "outputs")} == {"FINISHED"}


def test_a_joblib_worker_killed_by_the_os_ends_the_sweep_with_a_true_record(tmp_path):
    """The OOM killer takes a worker: joblib gives up on the sweep; every job is closed."""
    proc = _start(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *LONG_BENCHMARK,
                  "quantize=none,int8_dynamic")
    _wait_for_stage(tmp_path / "outputs", "benchmark", count=2)
    (worker,) = [r for r in _records(tmp_path / "outputs") if r["run_dir"].endswith("/0")]
    os.kill(int(worker["process"].split(":")[1]), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "the sweep's launcher failed: TerminatedWorkerError" in err and "Traceback" not in err
    assert "2/2 job(s)" in out
    assert {r["status"] for r in _records(tmp_path / "outputs")} == {"KILLED"}
    assert {r.info.status for r in _all_runs(_sqlite(tmp_path))} == {"KILLED"}
