"""Test helpers for ptflow-serve: a real export, a real server process on free 127.0.0.1
ports, and real clients (tritonclient, in their own process: it cannot share one with
kserve, which other tests import)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLIENT = Path(__file__).with_name("oip_client.py")


def make_export(where: Path, *overrides: str) -> Path:
    """Run the real pipeline once (no tracking, quick timing) and return its export dir."""
    run = where / "run"
    cmd = [sys.executable, "-m", "ptflow", "tracking=none", "benchmark=quick", "quantize=none",
           "export.fresh_check=false", f"hydra.run.dir={run}", *overrides]
    done = subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return run / "export"


def tracked_run(where: Path) -> tuple[subprocess.CompletedProcess, str]:
    """The bundled MLP's pipeline, tracked in `where`/outputs/mlflow.db, exporting pt2: the
    finished process and its MLflow run id."""
    done = subprocess.run([sys.executable, "-m", "ptflow", "benchmark=quick", "quantize=none", "export.formats=[pt2]",
                           "export.fresh_check=false", f"hydra.run.dir={where}/run"],
                          cwd=where, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done, next(line.split()[2] for line in done.stdout.splitlines() if line.strip().startswith("MLflow run"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``ptflow-serve SOURCE ...`` in a subprocess; stopped (SIGTERM, then kill) by stop()."""

    def __init__(self, source: Path | str, *args: str, log: Path, env: dict | None = None) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.log = log
        self.cmd = [sys.executable, "-m", "ptflow.serve.cli", str(source), "--http-port", str(self.http),
                    "--grpc-port", str(self.grpc), *args]
        self.proc = subprocess.Popen(self.cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s:\n{self.text()[-3000:]}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.text()[-3000:]}") from None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def clients(job: dict, where: Path, timeout: float = 120.0) -> dict:
    """Run oip_client.py on `job` in its own process; its JSON answer."""
    path = where / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    done = subprocess.run([sys.executable, str(CLIENT), str(path)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
