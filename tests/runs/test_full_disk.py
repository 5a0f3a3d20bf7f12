"""A full disk, and what runs of vanished processes leave: the record's reserve, closing stale
records with the end they kept, the partial files of killed runs, damaged records, and the
one-line messages for a store that fails — in-process, against a sqlite store made here."""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptflow.core import lifecycle
from ptflow.core.files import creatable_dir_problem, describe_disk_full, room_problem
from ptflow.runs import record as record_module
from ptflow.runs.record import RESERVE_BYTES, RESERVE_FILE, RESULT_FILE, RunRecord
from ptflow.runs.runs_cli import run as runs_cli
from ptflow.runs.stale import Freed, close_stale_records, close_stale_runs
from ptflow.runs.tracker import INCOMPLETE_TAG, describe_failure, quiet_store_logs
from tests.conftest import ROOT

FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def gone() -> lifecycle.ProcessId:
    """The id of a process of this host that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return dataclasses.replace(lifecycle.current_process(), pid=child.pid, started="1")


def _running(run_dir: Path, process: lifecycle.ProcessId, stage: str = "load", **more) -> RunRecord:
    record = RunRecord(str(run_dir), ["benchmark=quick"], process=str(process), stage=stage, **more)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.reserve()
    record.write()
    return record


def _fail_saves(monkeypatch) -> None:
    def full(path, data):
        raise OSError(FULL.errno, FULL.strerror, str(path))

    monkeypatch.setattr(record_module, "write_atomic", full)


def _on_disk(run_dir: Path) -> dict:
    return json.loads((run_dir / RESULT_FILE).read_text())


# ---- the reserve ------------------------------------------------------------------------------

def test_the_reserve_keeps_the_end_a_full_disk_kept_out_of_the_record(tmp_path, gone, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    record = _running(run_dir, gone)
    assert (run_dir / RESERVE_FILE).stat().st_size == RESERVE_BYTES
    _fail_saves(monkeypatch)
    record.stage = "benchmark"
    record.metrics["benchmark.speedup_p50"] = 2.0
    record.end("FAILED", 1, error="stage 'benchmark' failed: no space left on device writing x")
    assert record.save() is False and record.kept_in_reserve()
    assert "its state is kept in" in capsys.readouterr().err
    assert _on_disk(run_dir)["status"] == "RUNNING"                       # the record itself could not change
    assert (run_dir / RESERVE_FILE).stat().st_size == RESERVE_BYTES       # written over, never grown
    loaded = RunRecord.load(run_dir)
    assert (loaded.status, loaded.stage, loaded.exit_code, loaded.recovered) == ("FAILED", "benchmark", 1, True)
    assert loaded.error.startswith("stage 'benchmark' failed") and loaded.metrics == {"benchmark.speedup_p50": 2.0}


def test_a_saved_record_wipes_the_reserve_while_running_and_removes_it_at_the_end(tmp_path, gone, monkeypatch):
    run_dir = tmp_path / "run"
    record = _running(run_dir, gone)
    with monkeypatch.context() as patched:
        _fail_saves(patched)
        record.stage = "validate"
        assert record.save() is False
    record.stage = "quantize"
    assert record.save() and not record.kept_in_reserve()
    assert RunRecord.load(run_dir).stage == "quantize"                   # the older kept state is gone
    assert (run_dir / RESERVE_FILE).read_bytes().strip() == b""
    record.end("FINISHED", 0)
    assert record.save() and not (run_dir / RESERVE_FILE).exists()


def test_close_stale_ends_a_record_its_reserve_says_failed_as_failed_never_killed(tmp_path, gone, monkeypatch):
    run_dir = tmp_path / "outputs" / "runs" / "r1"
    record = _running(run_dir, gone)
    with monkeypatch.context() as patched:
        _fail_saves(patched)
        record.stage = "benchmark"
        record.end("FAILED", 1, error="stage 'benchmark' failed: no space left on device writing latency_samples")
        record.save()
    closed = close_stale_records(tmp_path / "outputs")
    assert [Path(r.run_dir) for r in closed] == [run_dir]
    saved = _on_disk(run_dir)
    assert (saved["status"], saved["stage"], saved["exit_code"], saved["reason"]) == ("FAILED", "benchmark", 1, None)
    assert "no space left on device" in saved["error"]
    assert not (run_dir / RESERVE_FILE).exists()
    assert close_stale_records(tmp_path / "outputs") == []                # done once


def test_a_kept_running_state_gives_the_stage_to_the_kill(tmp_path, gone, monkeypatch):
    run_dir = tmp_path / "outputs" / "r1"
    record = _running(run_dir, gone)
    with monkeypatch.context() as patched:
        _fail_saves(patched)
        record.stage = "export"
        record.save()                                                     # then SIGKILL: no end at all
    (closed,) = close_stale_records(tmp_path / "outputs")
    assert closed.status == "KILLED" and "during stage 'export'" in closed.reason
    assert _on_disk(run_dir)["status"] == "KILLED" and not (run_dir / RESERVE_FILE).exists()


def test_close_stale_runs_ends_the_mlflow_run_as_its_reserve_says(tmp_path, gone, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("ptflow", artifact_location=(tmp_path / "art").as_uri())
    run_dir = tmp_path / "runs" / "r1"
    run = client.create_run(experiment, tags={"ptflow.process": str(gone), "ptflow.run_dir": str(run_dir)})
    record = _running(run_dir, gone)
    record.tracking.uri, record.tracking.run_id = uri, run.info.run_id
    record.write()
    with monkeypatch.context() as patched:
        _fail_saves(patched)
        record.stage = "benchmark"
        record.end("FAILED", 1, error="stage 'benchmark' failed: no space left on device")
        record.save()
    assert close_stale_runs(client, [experiment]) == [run.info.run_id]
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FAILED" and "ptflow.kill_reason" not in closed.data.tags
    assert closed.data.tags["ptflow.error"] == "stage 'benchmark' failed: no space left on device"
    assert f"ptflow-runs relog {run_dir}" in closed.data.tags[INCOMPLETE_TAG]   # it lacks what was never logged
    assert _on_disk(run_dir)["status"] == "FAILED"


# ---- partial files of killed runs -------------------------------------------------------------

def test_close_stale_removes_the_partial_files_of_the_dead_process(tmp_path, gone):
    shared = tmp_path / "exports"
    run_dir = tmp_path / "outputs" / "r1"
    _running(run_dir, gone, stage="export", config={"export": {"dir": str(shared)}})
    leftovers = [run_dir / f".model.pt2.partial-{gone.pid}", run_dir / "export" / f".model.partial-{gone.pid}.pt2",
                 shared / f".model.partial-{gone.pid}.onnx"]
    kept = [run_dir / "export" / f".model.partial-{os.getpid()}.pt2", shared / "model.pt2",
            run_dir / "notes.partial-1"]
    for number, path in enumerate(leftovers + kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (1000 + number))
    freed = Freed()
    close_stale_records(tmp_path / "outputs", freed)
    assert [p for p in leftovers if p.exists()] == [] and all(p.exists() for p in kept)
    assert (freed.files, freed.bytes) == (3, 1000 + 1001 + 1002)
    assert "removed 3 partial file(s)" in str(freed)


def test_sigkill_mid_export_leaves_a_partial_that_close_stale_removes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faults"), str(ROOT)]),
           "PTFLOW_TEST_FAULT": f"slowwrite:.model.partial:{tmp_path / 'mark'}"}
    proc = subprocess.Popen([sys.executable, "-m", "ptflow", "benchmark=quick", "tracking=none"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (tmp_path / "mark").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert list(tmp_path.rglob(f".model.partial-{proc.pid}.*"))   # the example, written first
    result = subprocess.run([sys.executable, "-m", "ptflow.runs.runs_cli", "close-stale"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "removed 1 partial file(s) left by killed runs" in result.stdout
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]


# ---- damaged records, unwritable places, failing stores ------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("{not json", "is not valid JSON"),
    ('{"run_dir": "x", "metrics": [1, 2]}', "'metrics' is list"),
    ('{"run_dir": "x", "tracking": "sqlite:///x"}', "'tracking' is str"),
    ('{"run_dir": "x", "status": "DONE"}', "'status' is 'DONE'"),
    ("[1, 2]", "not a run record"),
])
def test_relog_of_a_damaged_record_says_so_in_one_line(tmp_path, capsys, text, says):
    (tmp_path / RESULT_FILE).write_text(text)
    assert runs_cli(["relog", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / RESULT_FILE) in err and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_relog_of_a_complete_record_removes_the_incomplete_tag(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("ptflow", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment, tags={INCOMPLETE_TAG: "no space left on device writing x"})
    client.set_terminated(run.info.run_id, "FINISHED")
    record = RunRecord(str(tmp_path / "run"), [], status="FINISHED", exit_code=3, config={"seed": 0})
    record.tracking.uri, record.tracking.experiment, record.tracking.run_id = uri, "ptflow", run.info.run_id
    assert record.save()
    assert runs_cli(["relog", record.run_dir]) == 0, capsys.readouterr().err
    assert INCOMPLETE_TAG not in client.get_run(run.info.run_id).data.tags


def test_a_dir_that_takes_no_new_directory_is_found_even_as_root(tmp_path):
    assert creatable_dir_problem(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == []                                 # the probe leaves nothing
    if Path("/proc/self").is_dir():
        assert "does not take new directories" in creatable_dir_problem(Path("/proc/x"))


def test_room_problem_names_the_place_short_of_space(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    assert room_problem([tmp_path / "outputs"]) is None or usage.free < 4e6
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=40_000))
    problem = room_problem([tmp_path / "outputs", tmp_path / "outputs" / "runs"])
    assert problem.startswith(f"no space left on {tmp_path / 'outputs'}: 0.04 MB free")


def test_a_store_that_is_full_fails_in_one_line_that_says_so():
    try:
        try:
            raise Exception("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT INTO runs ...]")
        except Exception as cause:
            raise RuntimeError("(raised as a result of Query-invoked autoflush; consider using a session."
                               "no_autoflush block)\n(sqlite3.OperationalError) database or disk is full") from cause
    except RuntimeError as error:
        text = describe_failure(error, "sqlite:////data/outputs/mlflow.db")
    assert text.startswith("no space left on device writing the MLflow store sqlite:////data/outputs/mlflow.db "
                           "((sqlite3.OperationalError) database or disk is full)") and "\n" not in text
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert describe_disk_full(rust, "/runs/r1").startswith("no space left on device writing /runs/r1 (Error while")
    assert describe_disk_full(ValueError("shapes differ"), "/runs/r1") is None
    other = RuntimeError("(raised as a result of Query-invoked autoflush)\n(sqlite3.OperationalError) locked")
    assert describe_failure(other, "sqlite:///x.db") == "RuntimeError: (sqlite3.OperationalError) locked"
    quiet_store_logs()
    assert logging.getLogger("mlflow.store.db.utils").level == logging.CRITICAL
