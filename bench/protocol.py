"""Does ptflow's latency protocol measure what it should? Three checks on the bundled model
(digits_mlp, the default pipeline: quantize=int8_dynamic, batch 150):

1. In one process, each model timed three ways — ptflow's protocol (benchmark=default),
   torch.utils.benchmark's Timer.blocked_autorange, and a naive perf_counter loop — in
   rotating order over a few rounds: medians and their % difference from torch's.
   Target: ptflow within 3% of torch.utils.benchmark.
2. The default pipeline's speedup in N separate `ptflow` processes: the spread
   (max - min) / median, and whether each process's 95% CI holds the median of the
   others. Target: spread <= 2%.
3. One more process while busy loops compete for the CPU: is the run flagged?

    python bench/protocol.py [--processes 5] [--rounds 3] [--threads 1] [--load-procs N]

Figures depend on the machine and on what else runs on it: say how busy it was.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PTFLOW = [sys.executable, "-m", "ptflow"]
BUSY_LOOP = "while True: pass"


def in_process(threads: int, rounds: int) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from torch.utils import benchmark as torch_benchmark

    from ptflow.app.settings import compile_plan
    from ptflow.core import engine
    from ptflow.measure import device
    from ptflow.stages.benchmark.timing import Mode, measure_size, protocol_for
    from tests.conftest import compose, make_context

    config, choices = compose(f"device.threads={threads}", "tracking=none", "pipeline=[load,validate,quantize]")
    plan = compile_plan(config, choices)
    device.apply(plan.settings.device)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = engine.run(plan, make_context(Path(tmp), plan))
    (bench,) = [p.config.benchmark for p in compile_plan(*compose()).stages if p.spec.name == "benchmark"]
    protocol = protocol_for(bench, "cpu", Mode.LATENCY, 1)
    models = {"baseline": artifact.baseline.model, "candidate": artifact.model}
    inputs = artifact.example.inputs
    x = inputs.args[0]
    print(f"1. one process, batch {inputs.batch_size()}, {torch.get_num_threads()} thread(s), {rounds} rounds "
          "in rotating order (median of the rounds' medians, ms)")

    def ours():   # as the pipeline does it: both models interleaved
        result = measure_size(models, inputs, "cpu", Mode.LATENCY, 1, protocol, lambda it, **_: it, 0)
        return {role: result.stats[role].p50_ms for role in models}

    def torchs():
        return {role: torch_benchmark.Timer("m(x)", globals={"m": model, "x": x}, num_threads=threads)
                .blocked_autorange(min_run_time=2.0).median * 1e3 for role, model in models.items()}

    def naive():
        found = {}
        for role, model in models.items():
            samples = []
            for _ in range(10):
                model(x)
            for _ in range(100):
                start = time.perf_counter()
                model(x)
                samples.append(time.perf_counter() - start)
            found[role] = statistics.median(samples) * 1e3
        return found

    methods = {"ptflow": ours, "torch.utils.benchmark": torchs, "naive loop": naive}
    found = {(name, role): [] for name in methods for role in models}
    with torch.inference_mode():
        for round_index in range(rounds):
            names = list(methods)
            for name in names[round_index % 3:] + names[:round_index % 3]:
                for role, ms in methods[name]().items():
                    found[name, role].append(ms)
    met = True
    print(f"   {'role':<11}{'ptflow':>9}{'torch':>9}{'naive':>9}{'ptflow vs torch':>17}{'naive vs torch':>16}")
    for role in models:
        ms = {name: statistics.median(found[name, role]) for name in methods}
        reference = ms["torch.utils.benchmark"]
        ours_off, naive_off = (ms["ptflow"] / reference - 1) * 100, (ms["naive loop"] / reference - 1) * 100
        met &= abs(ours_off) <= 3
        print(f"   {role:<11}{ms['ptflow']:>9.3f}{reference:>9.3f}{ms['naive loop']:>9.3f}{ours_off:>+16.1f}%"
              f"{naive_off:>+15.1f}%")
        print(f"   {'':<11}rounds: " + "; ".join(f"{name} " + " ".join(f"{v:.3f}" for v in found[name, role])
                                                for name in methods))
    print(f"   target ptflow within 3% of torch.utils.benchmark: {'met' if met else 'NOT met'}")


def one_process(threads: int, cwd: Path) -> dict:
    result = subprocess.run([*PTFLOW, f"device.threads={threads}", "experiment=latency_only", "tracking=none"],
                            cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ptflow failed ({result.returncode}):\n{result.stderr[-2000:]}")
    (path,) = sorted(cwd.glob("outputs/runs/*/*/summary.json"))[-1:]
    return json.loads(path.read_text())


def describe(summary: dict) -> str:
    low, high = summary["speedup_ci"]
    spread = ", ".join(f"{k} {v * 100:.1f}%" for k, v in summary.get("dispersion", {}).items())
    stability = "invalid" if summary.get("invalid") else "unstable" if summary.get("unstable") else "stable"
    n = summary["latency_ms"]
    return (f"{summary['speedup_p50']:.3f}x [{low:.3f}, {high:.3f}]  p50 {n['baseline']['p50']:.3f} -> "
            f"{n['optimized']['p50']:.3f} ms  IQR/median {spread}  {stability}")


def processes(threads: int, count: int) -> None:
    print(f"\n2. the default pipeline's speedup in {count} separate processes "
          f"(ptflow device.threads={threads} experiment=latency_only tracking=none)")
    summaries = []
    for index in range(count):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            summary = one_process(threads, Path(tmp))
        summaries.append(summary)
        print(f"   process {index + 1}: {describe(summary)}  ({time.perf_counter() - started:.0f} s)")
    speedups = [s["speedup_p50"] for s in summaries]
    spread = (max(speedups) - min(speedups)) / statistics.median(speedups)
    held = []
    for index, summary in enumerate(summaries):
        others = statistics.median(speedups[:index] + speedups[index + 1:])
        low, high = summary["speedup_ci"]
        held.append(low <= others <= high)
    print(f"   spread (max-min)/median {spread * 100:.2f}%  (target <= 2%: {'met' if spread <= 0.02 else 'NOT met'})")
    print(f"   each CI holds the median of the others: {['yes' if h else 'no' for h in held]} "
          f"({sum(held)}/{len(held)})")


def under_load(threads: int, load_procs: int) -> None:
    print(f"\n3. one process while {load_procs} busy-loop process(es) compete for the CPU")
    loads = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(load_procs)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = one_process(threads, Path(tmp))
    finally:
        for load in loads:
            load.terminate()
        for load in loads:
            load.wait()
    flagged = summary.get("unstable") or summary.get("invalid")
    print(f"   {describe(summary)}")
    print(f"   flagged: {'yes' if flagged else 'NO'}; warnings: {list(summary.get('warnings', {}))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--load-procs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    in_process(args.threads, args.rounds)
    processes(args.threads, args.processes)
    under_load(args.threads, args.load_procs)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
