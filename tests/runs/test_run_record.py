"""The pieces of the run lifecycle, in-process: claims, atomic writes, records, signals."""
from __future__ import annotations

import dataclasses
import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ptflow.core import lifecycle
from ptflow.core.errors import StageError, first_line
from ptflow.core.files import (CLAIM_FILE, claim_dir, creatable_dir_problem, describe_no_space, no_space,
                          write_atomic)
from ptflow.runs.record import RESULT_FILE, RunRecord
from tests.conftest import ROOT


def _claim(path: str, queue) -> None:
    queue.put(str(claim_dir(Path(path))))


def test_processes_claiming_one_dir_at_once_each_get_their_own(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=_claim, args=(str(tmp_path / "runs" / "12-00-00"), queue)) for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    claimed = {queue.get(timeout=5) for _ in procs}
    assert len(claimed) == 8
    assert all((Path(c) / CLAIM_FILE).is_file() for c in claimed)


def test_a_dir_holding_an_older_run_or_a_file_in_the_way_is_skipped(tmp_path):
    old = tmp_path / "run"
    old.mkdir()
    (old / RESULT_FILE).write_text("{}")
    (tmp_path / "run-1").write_text("a file, not a dir")
    assert claim_dir(old, taken_if=(RESULT_FILE,)) == tmp_path / "run-2"


def test_an_existing_empty_dir_is_claimed_as_it_is(tmp_path):
    assert claim_dir(tmp_path) == tmp_path
    assert claim_dir(tmp_path) == tmp_path.with_name(tmp_path.name + "-1")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_atomic(target, "old")

    def half_then_full(self, data, encoding=None):
        with open(self, "w") as handle:
            handle.write(data[:2])
        raise OSError(errno.ENOSPC, "No space left on device")   # a write() error names no file

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError) as caught:
        write_atomic(target, "new")
    assert caught.value.filename == str(target)          # the message can name the file
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_full_disk_is_recognised_behind_a_stage_error(tmp_path):
    cause = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.pt2"))
    try:
        try:
            raise cause
        except OSError as error:
            raise StageError("export", error) from error
    except StageError as wrapped:
        found = no_space(wrapped)
    assert found is cause
    assert describe_no_space(found) .startswith(f"no space left on device writing {tmp_path / 'x.pt2'}")
    assert no_space(StageError("load", ValueError("no"))) is None


def test_creatable_dir_problem_names_the_obstacle(tmp_path):
    (tmp_path / "file").write_text("x")
    assert creatable_dir_problem(tmp_path / "new" / "deeper") is None
    assert "is a file" in creatable_dir_problem(tmp_path / "file" / "sub")


def test_first_line_digs_the_os_error_out_of_a_library_message():
    wrapped = Exception("API request to http://h:1/api failed with exception HTTPConnectionPool(host='h', "
                        "port=1): Max retries exceeded (Caused by NewConnectionError(\"...: Failed to "
                        "establish a new connection: [Errno 111] Connection refused\"))")
    assert first_line(wrapped) == "[Errno 111] Connection refused"
    assert first_line(ValueError("short\nand more")) == "short"


def test_a_record_survives_a_round_trip(tmp_path):
    record = RunRecord(str(tmp_path), ["seed=1"], process=str(lifecycle.current_process()))
    record.metrics["benchmark.speedup_p50"] = 2.0
    record.tracking.run_id = "abc"
    record.end("KILLED", 143, reason="SIGTERM received during stage 'benchmark'")
    assert record.save()
    loaded = RunRecord.load(tmp_path)
    assert loaded == record


def test_a_process_id_tells_a_live_process_from_a_gone_one():
    me = lifecycle.current_process()
    assert lifecycle.ProcessId.parse(str(me)) == me
    assert me.is_alive() is True
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert dataclasses.replace(me, pid=gone.pid, started="1").is_alive() is False
    assert dataclasses.replace(me, started="1").is_alive() is False        # same pid, other start time
    assert dataclasses.replace(me, host="another-host").is_alive() is None
    # same hostname, but another machine, or a container with its own pids: cannot be known here
    assert dataclasses.replace(me, boot="other-boot", machine="other-machine").is_alive() is None
    assert dataclasses.replace(me, pidns="4026530000").is_alive() is None
    if me.machine:   # this machine, booted since: the process is gone
        assert dataclasses.replace(me, boot="earlier-boot").is_alive() is False
    assert lifecycle.ProcessId.parse("garbage") is None
    old = lifecycle.ProcessId.parse(f"{me.host}:{me.pid}:{me.boot}:{me.started}")   # before machine/pidns
    assert old is not None and old.pid == me.pid


SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from ptflow.core import lifecycle
    lifecycle.install()
    try:
        with lifecycle.protected():
            os.kill(os.getpid(), signal.SIGTERM)   # deferred: the protected block finishes first
            print("protected block finished", flush=True)
    except lifecycle.Interrupted as stop:
        print(f"then raised {stop.signal_name} {stop.exit_code}", flush=True)
    with lifecycle.protected():
        os.kill(os.getpid(), signal.SIGTERM)       # a second signal: exit at once
        time.sleep(5)
        print("never printed", flush=True)
""")


def test_a_first_signal_waits_for_the_record_and_a_second_exits_at_once():
    result = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.splitlines() == ["protected block finished", "then raised SIGTERM 143"]
    assert result.returncode == 128 + signal.SIGTERM
    assert "second SIGTERM: exiting now" in result.stderr
