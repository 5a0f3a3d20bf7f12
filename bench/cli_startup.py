"""How fast the CLI answers: --help, a rejected typo, a dry run, and the whole default
pipeline (median of N runs each, whole-process wall time).

    python bench/cli_startup.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "ptflow --help": ["--help"],
    "ptflow quantize=int8_dynamik (rejected)": ["quantize=int8_dynamik"],
    "ptflow dry_run=true": ["dry_run=true"],
    "ptflow (default pipeline)": [],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for label, argv in CASES.items():
        times = []
        repeat = 1 if not argv else args.repeat
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "ptflow", *argv], cwd=tmp,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.append(time.perf_counter() - started)
        print(f"{label:<42} median {statistics.median(times):6.2f} s over {repeat} run(s)")


if __name__ == "__main__":
    main()
