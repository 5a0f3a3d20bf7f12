"""Close runs whose process is gone: killed with SIGKILL, by the out-of-memory killer, a
crash, a reboot, or a sweep stopped by a signal while its workers ran.

Every run records ``ptflow.process`` (host:pid:boot:start-time) and ``ptflow.run_dir``.
A RUNNING run on this host whose process no longer exists can never end by itself: it
is set KILLED with tag ``ptflow.kill_reason`` saying what is known, and its run dir's
record is updated to match. ptflow does this on every launch, for the experiments it is
about to use, and ``ptflow-runs close-stale`` does it on demand. Runs of other hosts are
left alone: their processes cannot be seen from here.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from ptflow.lifecycle import ProcessId, wait_until_gone
from ptflow.record import RESULT_FILE, RunRecord, now

MAX_RUNS = 1000


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def vanished_reason(process: ProcessId) -> str:
    return (f"process {process.pid} on {process.host} ended without closing this run (SIGKILL, out "
            f"of memory, a crash or a reboot); closed as KILLED by ptflow (pid {os.getpid()}) at {now()}")


def close_stale_runs(client, experiment_ids: list[str]) -> list[str]:
    """KILL the RUNNING runs of dead processes on this host; return their ids."""
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`ptflow.process` LIKE {_quote(host + ':%')}"
    closed = []
    for run in client.search_runs(experiment_ids, query, max_results=MAX_RUNS):
        process = ProcessId.parse(run.data.tags.get("ptflow.process", ""))
        if process is None or process.is_alive() is not False:
            continue
        _close(client, run, vanished_reason(process))
        closed.append(run.info.run_id)
    return closed


def close_stale_records(root: Path) -> list[Path]:
    """KILL the RUNNING run records under `root` whose process on this host is gone (runs
    without tracking, or killed before their MLflow run existed); return their run dirs."""
    closed = []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        try:
            record = RunRecord.load(path.parent)
        except (OSError, ValueError):
            continue
        process = ProcessId.parse(record.process)
        if record.status != "RUNNING" or process is None or process.is_alive() is not False:
            continue
        _close_record(record, vanished_reason(process), None)
        closed.append(path.parent)
    return closed


def close_sweep(sweep_dir: Path, reason: str, exit_code: int, client=None, experiment_ids: list[str] = (),
                wait_s: float = 5.0) -> int:
    """After a sweep was stopped: every job still RUNNING (record or MLflow) ends KILLED.

    A launcher's workers may be killed (joblib's loky uses SIGKILL) before they record
    their own end, so the launching process closes what they left open. Returns how
    many job records it closed."""
    records = []
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}")):
        try:
            records.append(RunRecord.load(path.parent))
        except (OSError, ValueError):
            continue
    running = [r for r in records if r.status == "RUNNING"]
    wait_until_gone([p for p in (ProcessId.parse(r.process) for r in running) if p], wait_s)
    for record in running:
        _close_record(record, reason, exit_code, client)
    if client is not None and experiment_ids:   # a job stopped before its record named its run
        query = (f"attributes.status = 'RUNNING' and "
                 f"tags.`ptflow.sweep` = {_quote(str(Path(sweep_dir).resolve()))}")
        for run in client.search_runs(list(experiment_ids), query, max_results=MAX_RUNS):
            _close(client, run, reason)
    return len(running)


def _close(client, run, reason: str) -> None:
    """Close an MLflow run, and its run dir's record if that is on this machine."""
    run_dir = run.data.tags.get("ptflow.run_dir")
    try:
        record = RunRecord.load(Path(run_dir)) if run_dir else None
    except (OSError, ValueError):
        record = None
    if record is not None and record.status == "RUNNING" and record.tracking.run_id == run.info.run_id:
        _close_record(record, reason, None, client)
        return
    client.set_tag(run.info.run_id, "ptflow.kill_reason", reason)
    client.set_terminated(run.info.run_id, status="KILLED")


def _close_record(record: RunRecord, reason: str, exit_code: int | None, client=None) -> None:
    """A RUNNING record ends KILLED (and its MLflow run, when `client` is given)."""
    if record.status != "RUNNING":
        return
    where = f" during stage '{record.stage}'" if record.stage else ""
    record.end("KILLED", exit_code, reason=reason + where)
    if client is not None and record.tracking.run_id:
        client.set_tag(record.tracking.run_id, "ptflow.kill_reason", record.reason)
        client.set_terminated(record.tracking.run_id, status="KILLED")
    record.save()
