"""How fast ptflow decides when something is wrong, and what parallel runs cost.

    python bench/faults.py [--parallel 6]

Prints whole-process wall times: a tracking URI where nothing listens, one that never
answers, an unwritable store, and N default runs started at once into one fresh
outputs dir next to one run alone (every run must finish; the ratio is the price of
sharing the cores, not of the lock).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["experiment=latency_only", "benchmark=quick"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed(args: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptflow", *args], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, proc.returncode


def _parallel(n: int, cwd: str) -> tuple[float, list[int]]:
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "ptflow", *QUICK, f"seed={i}"], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
    codes = [p.wait() for p in procs]
    return time.perf_counter() - started, codes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", type=int, default=6)
    args = parser.parse_args()
    faults = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "faults")}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "ro").mkdir()
        cases = {
            "tracking.uri: refused port": ([f"tracking.uri=http://127.0.0.1:{_free_port()}"], None),
            "tracking.uri: host that never answers": (["tracking.uri=http://10.255.255.1:5000"], None),
            "outputs_dir not writable": ([f"outputs_dir={tmp}/ro"],
                                         {**faults, "PTFLOW_TEST_FAULT": f"readonly:{tmp}/ro"}),
        }
        for label, (argv, env) in cases.items():
            seconds, code = _timed(argv, tmp, env)
            print(f"{label:<40} exit {code}  {seconds:6.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        alone, code = _timed(QUICK, tmp)
        print(f"{'one run alone (fresh dir)':<40} exit {code}  {alone:6.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        together, codes = _parallel(args.parallel, tmp)
        runs = len(list(Path(tmp, "outputs", "runs").glob("*/*")))
        print(f"{f'{args.parallel} runs at once (fresh dir)':<40} exits {sorted(set(codes))}  {together:6.2f} s"
              f"  ({together / alone:.1f}x one run; {runs} run dirs)")


if __name__ == "__main__":
    main()
