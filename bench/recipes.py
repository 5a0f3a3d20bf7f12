"""Recipe figures for the bundled model: the 4-job sweep quantize x compile, read back
from MLflow. Each speedup is a paired ratio (baseline and candidate timed alternately in
one process), the only kind of figure worth comparing on a noisy 2-core machine.

    python bench/recipes.py [--iters 300]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ptflow", "-m", "quantize=none,int8_dynamic",
                        "compile=eager,inductor", f"benchmark.iters={args.iters}",
                        "experiment=latency_only"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{Path(tmp) / 'outputs' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("ptflow")
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        print(f"sweep of {len(runs)} jobs in {wall:.1f} s (iters={args.iters}, batch 150)")
        print(f"{'quantize':<14}{'compile':<10}{'fp32 p50 ms':>12}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'speedup':>9}{'acc delta':>11}{'compile s':>11}")
        for run in runs:
            m, t = run.data.metrics, run.data.tags
            print(f"{t['quantize']:<14}{t['compile']:<10}{m['benchmark/baseline.p50_ms']:>12.3f}"
                  f"{m['benchmark/candidate.p50_ms']:>9.3f}{m['benchmark/candidate.p99_ms']:>9.3f}"
                  f"{m['benchmark/speedup_p50']:>8.2f}x{m['benchmark/top1_accuracy_delta']:>+11.4f}"
                  f"{m['compile/compile_s']:>11.2f}")


if __name__ == "__main__":
    main()
