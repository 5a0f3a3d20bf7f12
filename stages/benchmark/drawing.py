"""The latency pictures, drawn by a process of their own while the run goes on.

matplotlib's import and the drawing cost ~0.4 s of a run's wall time when done in line; a
child process (``python -m ptflow.measure.plots REQUEST``) draws them on another core while
the export stage works, and the stage waits for it when the run stops. The pictures are
written atomically: a file that is there is whole.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptflow.core.errors import first_line

WAIT_S = 60.0   # what the run waits for its pictures at most when it stops


class Drawing:
    """One child drawing the pictures `request` names (``ptflow.measure.plots.draw``)."""

    def __init__(self, request: Mapping[str, Any]):
        handle, name = tempfile.mkstemp(prefix="ptflow-pictures-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(request, file)
        self.request = Path(name)
        self.paths = [Path(item["path"]) for item in request.values()]
        self.process = subprocess.Popen([sys.executable, "-m", "ptflow.measure.plots", name],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    def finish(self, timeout: float = WAIT_S) -> str | None:
        """Wait for the pictures; None when they are drawn, else what went wrong."""
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return f"drawing them took more than {timeout:g} s"
        finally:
            self.request.unlink(missing_ok=True)
        if self.process.returncode != 0:
            lines = [line for line in (err or "").strip().splitlines() if line.strip()]
            return f"the drawing process exited {self.process.returncode}: {first_line(lines[-1]) if lines else 'no message'}"
        return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
        self.request.unlink(missing_ok=True)
