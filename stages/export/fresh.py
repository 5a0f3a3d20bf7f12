"""The fresh-process check: each exported file loaded the way its manifest says, by a new
Python process that has imported nothing else.

Reloading in the exporting process proves little: that process has imported the op
libraries (PT2E's ``quantized_decomposed``, torchao), the model's output classes
(transformers) and ptflow itself, so a file that needs them loads there and fails for the
user. Here every file gets its own process, started when the stage starts (it imports torch
while the file is traced and written) and given its job as soon as the file is written, so it
runs while the stage checks the next format in-process. The process runs the manifest's
``load`` line (its imports are the ``requires`` list) and its ``call`` line on the example
file's inputs, and compares with the outputs recorded there (``fresh_child.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("fresh_child.py")
TIMEOUT_S = 600.0
_MARK = "PTFLOW-FRESH "


@dataclass
class FreshCheck:
    """One file's check: a process started ahead (``spawn``), given its job (``send``), then
    waited for (``result``)."""

    process: subprocess.Popen
    format: str = ""
    load: str = ""
    started: float = 0.0

    def send(self, fmt: str, load: str, call: str | None, example: dict[str, Any], example_file: str,
             tensors: int = 0, device: str = "cpu") -> None:
        """The file the `load` line names (relative to the export dir) is written: check it. The
        example's inputs are moved to `device` (where the file's program runs) before the call line."""
        job = {"load": load, "call": call, "example": example_file, "tensors": tensors, "device": device,
               "inputs": [d["name"] for d in example["inputs"]], "passed_as": example["passed_as"],
               "outputs": [d["name"] for d in example["outputs"]]}
        self.format, self.load, self.started = fmt, load, time.perf_counter()
        try:   # a line, flushed: the child reads one line (communicate() closes stdin later)
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
        except OSError:   # it died starting (reported by result())
            pass

    def result(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        """{"ok": bool, "max_abs_error"|"error"+"step", "seconds": wall time since send}."""
        try:
            out, err = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"ok": False, "step": "load", "seconds": time.perf_counter() - self.started,
                    "error": f"the check took more than {timeout_s:.0f} s and was stopped"}
        seconds = time.perf_counter() - self.started
        report = next((line[len(_MARK):] for line in reversed(out.splitlines()) if line.startswith(_MARK)), None)
        if report is None:   # died before reporting (a crash in a native library, a signal)
            tail = [line for line in err.strip().splitlines() if line.strip()][-3:]
            return {"ok": False, "step": "load", "seconds": seconds,
                    "error": f"the process exited with status {self.process.returncode}"
                             + (f": {' | '.join(tail)}" if tail else "")}
        return {**json.loads(report), "seconds": seconds}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def spawn(directory: Path) -> FreshCheck:
    """A new Python process in `directory` (the export dir), importing torch, waiting for its job."""
    env = dict(os.environ)
    # the user's own modules (a model's output classes) import as they did for the run
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    process = subprocess.Popen([sys.executable, "-c", CHILD.read_text(encoding="utf-8")], cwd=directory, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return FreshCheck(process)
