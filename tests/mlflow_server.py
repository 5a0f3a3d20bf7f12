"""A real `mlflow server` on 127.0.0.1 for the tests that need one, and the `server` fixture
(conftest.py offers it to every test): started by the test, killed after it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fault_files import free_port


class Server:
    """A real `mlflow server` on 127.0.0.1, started and stopped by the test."""

    def __init__(self, root: Path, backend: str | None = None):
        """`backend`: the backend store URI (e.g. postgresql://...); default a sqlite file in `root`."""
        self.root, self.port, self.backend = root, free_port(), backend
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import urllib.request

        self.root.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend or f"sqlite:///{self.root / 'db.sqlite'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "wb"), start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        log = (self.root / "server.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"mlflow server did not start (exit {self.proc.returncode}):\n{log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server")
    srv.start()
    yield srv
    srv.stop()
