"""What a sweep saves: 8 recipes as 8 separate cold `ptflow` commands, as one sweep, and as
one parallel sweep (joblib, 2 workers), each in a fresh outputs dir (its own stage cache,
MLflow store and inductor cache), measured back to back in one invocation.

    python bench/sweep.py [--benchmark quick|default] [--jobs 2]

Prints each wall time, the ratios to the cold runs, and where a sweep's time goes (the
stages' own time from the run records, the cache hits).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = ["none", "int8_dynamic", "int8_weight_only", "bf16", "fp16", "autocast_bf16", "int8_static",
           "int8_qat"]


def _ptflow(cwd: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptflow", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ptflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def _stage_seconds(outputs: Path) -> tuple[float, int, int]:
    """(sum of stage durations, validate hits, load hits) over the run records under `outputs`."""
    total, validate_hits, load_hits = 0.0, 0, 0
    for path in outputs.rglob("ptflow_result.json"):
        metrics = json.loads(path.read_text())["metrics"]
        total += sum(v for k, v in metrics.items() if k.endswith(".duration_s"))
        validate_hits += int(metrics.get("cache.validate_hit", 0))
        load_hits += int(metrics.get("cache.load_hit", 0))
    return total, validate_hits, load_hits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--benchmark", default="default", help="benchmark preset of every run")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers of the parallel sweep")
    args = parser.parse_args()
    common = [f"benchmark={args.benchmark}"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ptflow-bench-sweep-") as tmp:
        modes = {
            "8 cold commands": [[*common, f"quantize={r}"] for r in RECIPES],
            "one sweep": [["-m", *common, "quantize=" + ",".join(RECIPES)]],
            f"parallel sweep (joblib n_jobs={args.jobs})": [["-m", *common, "quantize=" + ",".join(RECIPES),
                                                              "hydra/launcher=joblib",
                                                              f"hydra.launcher.n_jobs={args.jobs}"]],
        }
        for name, commands in modes.items():
            cwd = Path(tmp) / name.split()[0]
            cwd.mkdir()
            wall = sum(_ptflow(cwd, *command) for command in commands)
            results[name] = (wall, *_stage_seconds(cwd / "outputs"))
    cold = results["8 cold commands"][0]
    print(f"{len(RECIPES)} recipes ({', '.join(RECIPES)}), benchmark={args.benchmark}, compile=eager, export pt2")
    print(f"{'mode':<34}{'wall s':>8}{'x cold':>8}{'stages s':>10}{'validate hits':>15}{'load hits':>11}")
    for name, (wall, stages, validate_hits, load_hits) in results.items():
        print(f"{name:<34}{wall:>8.1f}{wall / cold:>8.2f}{stages:>10.1f}{validate_hits:>15}{load_hits:>11}")


if __name__ == "__main__":
    main()
