"""What a sweep saves: 8 recipes as 8 separate cold `ptflow` commands (each in a fresh
outputs dir: no stage cache, no inductor cache), as 8 commands sharing one outputs dir (warm
caches), as one sweep, and as one parallel sweep (joblib), measured back to back.

    python bench/sweep.py [--workload eager|grid|both] [--benchmark quick|default] [--jobs 2]

Workloads: `eager` is 8 quantize recipes with compile=eager; `grid` is the quantize x compile
grid none,int8_dynamic,bf16,int8_static x eager,inductor. Prints each wall time, the ratio to
the cold commands, the stages' own time (from the run records) and the cache hits.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "eager": [f"quantize={q}" for q in ("none", "int8_dynamic", "int8_weight_only", "bf16", "fp16",
                                        "autocast_bf16", "int8_static", "int8_qat")],
    "grid": [f"quantize={q} compile={c}" for q in ("none", "int8_dynamic", "bf16", "int8_static")
             for c in ("eager", "inductor")],
}


def _ptflow(cwd: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}   # ptflow's own cache dir
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptflow", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"ptflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def _records(root: Path) -> tuple[float, int, int]:
    """(sum of stage durations, validate hits, load hits) over the run records under `root`."""
    total, validate_hits, load_hits = 0.0, 0, 0
    for path in root.rglob("ptflow_result.json"):
        metrics = json.loads(path.read_text())["metrics"]
        total += sum(v for k, v in metrics.items() if k.endswith(".duration_s"))
        validate_hits += int(metrics.get("cache.validate_hit", 0))
        load_hits += int(metrics.get("cache.load_hit", 0))
    return total, validate_hits, load_hits


def _sweep_args(recipes: list[str]) -> list[str]:
    """The recipes as one sweep: one comma list per key (the grid is their product)."""
    values: dict[str, list[str]] = {}
    for recipe in recipes:
        for part in recipe.split():
            key, value = part.split("=")
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    return [f"{k}={','.join(v)}" for k, v in values.items()]


def measure(workload: str, common: list[str], jobs: int, tmp: Path) -> None:
    recipes = WORKLOADS[workload]
    sweep = ["-m", *common, *_sweep_args(recipes)]
    modes = {
        "8 cold commands (fresh dir each)": ("fresh", [[*common, *r.split()] for r in recipes]),
        "8 commands, one outputs dir": ("shared", [[*common, *r.split()] for r in recipes]),
        "one sweep": ("shared", [sweep]),
        f"parallel sweep (joblib n_jobs={jobs})": ("shared", [[*sweep, "hydra/launcher=joblib",
                                                              f"hydra.launcher.n_jobs={jobs}"]]),
    }
    results = {}
    for number, (name, (dirs, commands)) in enumerate(modes.items()):
        root = tmp / f"{workload}-{number}"
        wall = 0.0
        for index, command in enumerate(commands):
            cwd = root / (str(index) if dirs == "fresh" else "shared")
            cwd.mkdir(parents=True, exist_ok=True)
            wall += _ptflow(cwd, *command)
        results[name] = (wall, *_records(root))
    cold = next(iter(results.values()))[0]
    print(f"\n{workload}: {len(recipes)} recipes ({'; '.join(recipes)}), {' '.join(common)}, export pt2")
    print(f"{'mode':<36}{'wall s':>8}{'x cold':>8}{'stages s':>10}{'validate hits':>15}{'load hits':>11}")
    for name, (wall, stages, validate_hits, load_hits) in results.items():
        print(f"{name:<36}{wall:>8.1f}{wall / cold:>8.2f}{stages:>10.1f}{validate_hits:>15}{load_hits:>11}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    parser.add_argument("--benchmark", default="quick", help="benchmark preset of every run")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers of the parallel sweep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptflow-bench-sweep-") as tmp:
        for workload in (WORKLOADS if args.workload == "both" else [args.workload]):
            measure(workload, [f"benchmark={args.benchmark}"], args.jobs, Path(tmp))


if __name__ == "__main__":
    main()
