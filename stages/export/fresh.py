"""The fresh-process check: each exported file loaded the way its manifest says, by a new
Python process that has imported nothing else.

Reloading in the exporting process proves little: that process has imported the op
libraries (PT2E's ``quantized_decomposed``, torchao), the model's output classes
(transformers) and ptflow itself, so a file that needs them loads there and fails for the
user. Here every file gets its own process, which imports torch ahead of its job: the first
format's from the start of the run (``ExportStage.start``: while the model loads, holding the
device's timed-section lock as it imports, so that no benchmark times beside it — ~1.5 s off
every run's end), the others when the stage starts. As soon as the traced program says what
loading it needs, the process imports exactly those modules (``prepare``: the load line's own
imports, earlier — torchao alone takes ~1.5 s) while the file is written; it gets its job once
the file is written and runs while the stage reloads the file in-process and checks the next
format. The process runs the manifest's ``load`` line (its imports are the ``requires`` list)
and its ``call`` line on the example file's inputs, and compares with the outputs recorded
there (``fresh_child.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptflow.core.errors import InputError

CHILD = Path(__file__).with_name("fresh_child.py")
TIMEOUT_S = 600.0
_MARK = "PTFLOW-FRESH "
LOCKS_ENV = "PTFLOW_FRESH_LOCKS"     # lock files the process holds while it imports torch (os.pathsep)
OWNER_ENV = "PTFLOW_FRESH_OWNER"     # who it says holds them (the .owner file beside each lock)
WARM_ENV = "PTFLOW_FRESH_WARM"       # torch's lazy modules it imports with torch (ExportFormat.warm)


@dataclass
class FreshCheck:
    """One file's check: a process started ahead (``spawn``), told what the load line will
    import (``prepare``, optional), given its job (``send``), then waited for (``result``)."""

    process: subprocess.Popen
    format: str = ""
    load: str = ""
    started: float = 0.0

    def prepare(self, imports: tuple[str, ...]) -> None:
        """The modules the file's load line will import first (its ``requires``): the process
        imports them now, in this order, and nothing else. An import that fails there is the
        load line's failure, reported as such once the job arrives."""
        if imports:
            self._write({"imports": list(imports)})

    def send(self, fmt: str, load: str, call: str | None, example: dict[str, Any], example_file: str,
             tensors: int = 0, device: str = "cpu", directory: Path | None = None) -> None:
        """The file the `load` line names (relative to `directory`, the export dir, where the
        process then works) is written: check it. The example's inputs are moved to `device`
        (where the file's program runs) before the call line."""
        job = {"load": load, "call": call, "example": example_file, "tensors": tensors, "device": device,
               "inputs": [d["name"] for d in example["inputs"]], "passed_as": example["passed_as"],
               "outputs": [d["name"] for d in example["outputs"]],
               "dir": str(directory) if directory is not None else None}
        self.format, self.load, self.started = fmt, load, time.perf_counter()
        self._write(job)

    def _write(self, message: dict[str, Any]) -> None:
        try:   # a line, flushed: the child reads line by line (communicate() closes stdin later)
            self.process.stdin.write(json.dumps(message) + "\n")
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


def spawn(directory: Path, locks: Sequence[Path] = (), owner: str = "", warm: Sequence[str] = ()) -> FreshCheck:
    """A new Python process in `directory`, importing torch (and `warm`, torch's own lazy modules
    that the format's loader imports first), waiting for its job. With `locks` (the device's
    timed-section lock files, ``ptflow.measure.device_lock``) it holds them while it imports,
    as `owner`: a process started before the benchmark never imports beside it."""
    if any(name.split(".")[0] != "torch" for name in warm):
        raise ValueError(f"warm imports must be torch's own modules, got {list(warm)}")
    env = dict(os.environ)
    # the user's own modules (a model's output classes) import as they did for the run
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env[LOCKS_ENV] = os.pathsep.join(str(path) for path in locks)
    env[OWNER_ENV] = owner
    env[WARM_ENV] = os.pathsep.join(warm)
    process = subprocess.Popen([sys.executable, "-c", CHILD.read_text(encoding="utf-8")], cwd=directory, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return FreshCheck(process)


def spawn_guarded(run_dir: Path, device: str, warm: Sequence[str] = ()) -> FreshCheck:
    """``spawn`` before the first stage runs: it holds `device`'s timed-section locks while it
    imports torch (and `warm`), so a benchmark of this run (or of any other ptflow job here)
    waits for the import rather than timing beside it. It works in `run_dir` until its job
    names the export dir."""
    from ptflow.measure import device_lock

    directory = device_lock.lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    locks = [directory / f"{name}.lock" for name in device_lock.lock_names(device)]
    return spawn(run_dir if run_dir.is_dir() else Path.cwd(), locks,
                 f"{run_dir} (pid {os.getpid()}): export's fresh-process check, importing torch", warm)


def verdict(check: FreshCheck, entry: dict[str, Any], tolerance: float) -> float:
    """Wait for the fresh-process check of `entry`'s file; raise InputError unless it loaded
    and gave the example's outputs. Its wall time."""
    result = check.result()
    name = check.format
    if not result["ok"]:
        step = {"load": "does not load", "call": "loads but fails on the example inputs",
                "compare": "loads but returns something else"}.get(result.get("step"), "fails")
        needs = f" (it imports {', '.join(entry['requires'])} first)" if entry.get("requires") else ""
        raise InputError(f"export.formats={name}: the file {step} in a fresh Python process that runs only its "
                         f"manifest's load line{needs}: {result['error']}. The load line: {entry['load']}. A user "
                         f"loading the file would hit this too; drop '{name}' from export.formats, or register "
                         "what it needs in a module the load line can import")
    if result["max_abs_error"] > tolerance:
        raise InputError(f"export.formats={name}: loaded in a fresh process, the file's outputs differ from the "
                         f"example's by {result['max_abs_error']:.3g} (export.tolerance.{name}={tolerance})")
    return float(result["seconds"])
