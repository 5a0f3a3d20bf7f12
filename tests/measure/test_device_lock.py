"""The cross-process device lock: timed sections on the same cores (or GPU) never overlap,
disjoint cores time side by side, and a killed holder does not block the next job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ptflow.measure.device_lock import lock_names, timed_section

HOLD = """
import json, sys, time
from ptflow.measure.device_lock import timed_section
cpus = [int(c) for c in sys.argv[1].split(",")]
with timed_section("cpu", cpus, owner=sys.argv[2]) as held:
    print("acquired", flush=True)
    time.sleep(float(sys.argv[3]))
print(json.dumps({"start": held.acquired_at, "end": held.released_at, "wait": held.wait_s}), flush=True)
"""


def _hold(tmp_path, cpus: str, owner: str, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PTFLOW_LOCK_DIR": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-c", HOLD, cpus, owner, str(seconds)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interval(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_lock_names_per_core_and_per_gpu():
    assert lock_names("cuda:1") == ("cuda-1",) and lock_names("cuda") == ("cuda-0",)
    assert lock_names("cpu", [3, 1, 1]) == ("cpu-1", "cpu-3")
    assert lock_names("cpu") == tuple(f"cpu-{n}" for n in sorted(os.sched_getaffinity(0)))


def test_jobs_on_the_same_cores_take_turns(tmp_path):
    first = _hold(tmp_path, "0,1", "job-a", 1.0)
    assert first.stdout.readline().strip() == "acquired"
    second = _hold(tmp_path, "1", "job-b", 0.1)   # overlaps on core 1
    a, b = _interval(first), _interval(second)
    assert b["start"] >= a["end"] and b["wait"] > 0.5


def test_jobs_on_disjoint_cores_time_side_by_side(tmp_path):
    first = _hold(tmp_path, "0", "job-a", 1.5)
    assert first.stdout.readline().strip() == "acquired"
    second = _hold(tmp_path, "1", "job-b", 0.1)
    a, b = _interval(first), _interval(second)
    assert b["start"] < a["end"] and b["wait"] < 1.0


def test_a_killed_holder_releases_its_lock(tmp_path):
    holder = _hold(tmp_path, "0", "job-a", 60)
    assert holder.stdout.readline().strip() == "acquired"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    started = time.perf_counter()
    with timed_section("cpu", [0], owner="job-b") as held:
        pass
    assert time.perf_counter() - started < 5 and held.released_at >= held.acquired_at


def test_waiting_is_reported_with_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("PTFLOW_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr("ptflow.measure.device_lock.REPORT_EVERY_S", 0.5)
    holder = _hold(tmp_path, "0", "sweep job 3", 2.5)
    assert holder.stdout.readline().strip() == "acquired"
    said: list[str] = []
    with timed_section("cpu", [0], report=said.append) as held:
        pass
    _interval(holder)
    assert held.wait_s > 0.5 and held.holders == ["sweep job 3"]
    assert said and "cpu-0" in said[0] and "sweep job 3" in said[0]


def test_disabled_lock_takes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PTFLOW_LOCK_DIR", str(tmp_path / "locks"))
    with timed_section("cpu", [0], enabled=False) as held:
        assert held.wait_s == 0
    assert not (tmp_path / "locks").exists()
