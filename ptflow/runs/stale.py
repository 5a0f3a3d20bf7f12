"""Close runs whose process is gone: killed with SIGKILL, by the out-of-memory killer, a
crash, a reboot, or a sweep stopped by a signal while its workers ran.

Every run records ``ptflow.process`` (host:pid:boot:start-time) and ``ptflow.run_dir``.
A RUNNING run on this host whose process no longer exists can never end by itself: it
is set KILLED with tag ``ptflow.kill_reason`` saying what is known, and its run dir's
record is updated to match. ptflow does this on every launch, for the experiments it is
about to use, and ``ptflow-runs close-stale`` does it on demand. Runs of other hosts are
left alone: their processes cannot be seen from here.

A run whose end is known is never called KILLED: a record that ended (or whose reserve
kept its end when the disk was full, see ``ptflow.runs.record``) is completed as it ended, and
its MLflow run closed the same way. Closing a dead process's run also removes the hidden
partial files it was writing (``.<name>.partial-<pid>``) in its run dir and its export.dir.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ptflow.core.errors import first_line
from ptflow.core.files import remove_partials
from ptflow.core.lifecycle import ProcessId, wait_until_gone
from ptflow.runs.record import RESULT_FILE, RunRecord, now, run_records
from ptflow.runs.tracking import sqlite_path

MAX_RUNS = 1000


@dataclass
class Freed:
    """The partial files that closing runs removed, for the caller to report."""

    files: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"removed {self.files} partial file(s) left by killed runs, {self.bytes / 1e6:.1f} MB freed"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def vanished_reason(process: ProcessId) -> str:
    return (f"process {process.pid} on {process.host} ended without closing this run (SIGKILL, out "
            f"of memory, a crash or a reboot); closed as KILLED by ptflow (pid {os.getpid()}) at {now()}")


def close_stale_runs(client, experiment_ids: list[str], freed: Freed | None = None) -> list[str]:
    """Close the RUNNING runs of dead processes on this host (KILLED, unless their record knows
    how they ended); return their ids."""
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`ptflow.process` LIKE {_quote(host + ':%')}"
    closed = []
    for run in client.search_runs(experiment_ids, query, max_results=MAX_RUNS):
        process = ProcessId.parse(run.data.tags.get("ptflow.process", ""))
        if process is None or process.is_alive() is not False:
            continue
        _close(client, run, vanished_reason(process), freed)
        closed.append(run.info.run_id)
    return closed


def close_stale_records(root: Path, freed: Freed | None = None) -> list[RunRecord]:
    """Close the RUNNING run records under `root` whose process on this host is gone (runs
    without tracking, or killed before their MLflow run existed): KILLED, or as they ended
    when their reserve kept the end (their MLflow run, still RUNNING, too). Returns them."""
    closed, clients = [], _Clients()
    for record in run_records(Path(root).rglob(RESULT_FILE)):
        process = ProcessId.parse(record.process)
        if process is None or process.is_alive() is not False:
            continue
        if record.status == "RUNNING":
            close_record(record, vanished_reason(process), None, freed=freed)
        elif record.recovered:
            complete_record(record, clients.get(_existing_store(record.tracking.uri)), freed)
        else:
            continue
        closed.append(record)
    return closed


def _existing_store(uri: str | None) -> str | None:
    """`uri`, unless it is a sqlite file that is gone (MLflow would create an empty one)."""
    db = sqlite_path(uri) if uri else None
    return None if db is not None and not db.is_file() else uri


def close_sweep(sweep_dir: Path, reason: str, exit_code: int, stores: list[tuple[str, str]] = (),
                wait_s: float = 5.0) -> int:
    """After a sweep was stopped: every job still RUNNING (record or MLflow) ends KILLED.

    A launcher's workers may be killed (joblib's loky uses SIGKILL) before they record
    their own end, so the launching process closes what they left open: each record is
    saved first, then its MLflow run closed in its own store; a store that fails only
    costs its own MLflow runs. `stores` are the sweep's (uri, experiment id) pairs.
    Returns how many job records it closed."""
    running = [r for r in run_records(Path(sweep_dir).glob(f"*/{RESULT_FILE}")) if r.status == "RUNNING"]
    wait_until_gone([p for p in (ProcessId.parse(r.process) for r in running) if p], wait_s)
    # A job still alive, or on another host (a SLURM node), is still running: it closes its own run.
    elsewhere = [r for r in running if (p := ProcessId.parse(r.process)) is not None and p.is_alive() is not False]
    running = [r for r in running if r not in elsewhere]
    if elsewhere:
        print(f"ptflow: {len(elsewhere)} job(s) of this sweep are still running (another host, or a launcher "
              f"such as SLURM's that outlives this process); their runs are left open and end by themselves. "
              f"Cancel them with the launcher (scancel: job ids under {Path(sweep_dir) / '.submitit'})",
              file=sys.stderr)
    clients = _Clients()
    for record in running:
        close_record(record, reason, exit_code, clients.get(record.tracking.uri))
    open_ids = {r.tracking.run_id for r in elsewhere}
    for uri, experiment_id in stores:   # a job stopped before its record named its run
        query = (f"attributes.status = 'RUNNING' and "
                 f"tags.`ptflow.sweep` = {_quote(str(Path(sweep_dir).resolve()))}")
        client = clients.get(uri)
        runs = _quietly(lambda: client.search_runs([experiment_id], query, max_results=MAX_RUNS), uri) or []
        for run in runs:
            if run.info.run_id not in open_ids:
                _close(client, run, reason)
    return len(running)


class _Clients:
    """One MlflowClient per tracking URI, made when first needed."""

    def __init__(self) -> None:
        self._made: dict[str, object] = {}

    def get(self, uri: str | None):
        if not uri:
            return None
        if uri not in self._made:
            from mlflow.tracking import MlflowClient

            from ptflow.runs.tracker import quiet_store_logs

            quiet_store_logs()
            self._made[uri] = MlflowClient(tracking_uri=uri)
        return self._made[uri]


def _quietly(call, uri: str | None):
    """An MLflow call whose failure is reported, not raised: the records are what must be right."""
    try:
        return call()
    except Exception as error:
        print(f"ptflow: could not update MLflow at {uri}: {type(error).__name__}: {first_line(error)}",
              file=sys.stderr)
        return None


def _close(client, run, reason: str, freed: Freed | None = None) -> None:
    """Close an MLflow run, and its run dir's record if that is on this machine: as the record
    says it ended, if it does; else KILLED for `reason`."""
    run_dir = run.data.tags.get("ptflow.run_dir")
    found = run_records([Path(run_dir) / RESULT_FILE]) if run_dir else []
    if found and found[0].tracking.run_id == run.info.run_id:
        if found[0].status == "RUNNING":
            close_record(found[0], reason, None, client, freed)
        else:
            complete_record(found[0], client, freed)
        return
    _terminate(client, run.info.run_id, reason, None)


def close_record(record: RunRecord, reason: str, exit_code: int | None, client=None,
                 freed: Freed | None = None) -> None:
    """A RUNNING record ends KILLED — saved first — and then its MLflow run, when `client` is given."""
    if record.status != "RUNNING":
        return
    where = f" during stage '{record.stage}'" if record.stage else ""
    record.end("KILLED", exit_code, reason=reason + where)
    record.save()
    _remove_partials(record, freed)
    if client is not None and record.tracking.run_id:
        _terminate(client, record.tracking.run_id, record.reason, record.tracking.uri)


def complete_record(record: RunRecord, client=None, freed: Freed | None = None) -> None:
    """A record whose process is gone but whose end is known: saved with that end when it came
    from its reserve, and its MLflow run, if still RUNNING, ended the same way."""
    if record.recovered:
        record.save()
    _remove_partials(record, freed)
    run_id = record.tracking.run_id
    if client is None or not run_id:
        return

    def finish() -> None:
        from ptflow.runs.mlflow_calls import set_terminated
        from ptflow.runs.tracker import INCOMPLETE_TAG, MAX_TAG, relog_command

        if client.get_run(run_id).info.status != "RUNNING":
            return
        missing = None if record.tracking.complete else (
            f"{record.tracking.error or 'the run ended before it could log its record'}; the run dir holds it "
            f"all: {relog_command(record.run_dir)}")
        for tag, text in (("ptflow.error", record.error), ("ptflow.kill_reason", record.reason),
                          (INCOMPLETE_TAG, missing)):
            if text:
                client.set_tag(run_id, tag, text[:MAX_TAG])
        set_terminated(client, run_id, "FAILED" if record.status == "CONFIG_ERROR" else record.status)

    _quietly(finish, record.tracking.uri)


def _remove_partials(record: RunRecord, freed: Freed | None) -> None:
    """The partial files the record's dead process left in its run dir and its export.dir."""
    process = ProcessId.parse(record.process)
    if process is None or process.is_alive() is not False:
        return
    export = record.config.get("export")
    export_dir = export.get("dir") if isinstance(export, dict) else None
    count, size = remove_partials(process.pid, Path(record.run_dir),
                                  [Path(export_dir).expanduser()] if isinstance(export_dir, str) else [])
    if freed is not None:
        freed.files, freed.bytes = freed.files + count, freed.bytes + size


def _terminate(client, run_id: str, reason: str, uri: str | None) -> None:
    from ptflow.runs.mlflow_calls import set_terminated

    def close() -> None:
        client.set_tag(run_id, "ptflow.kill_reason", reason)
        set_terminated(client, run_id, "KILLED")

    _quietly(close, uri)
