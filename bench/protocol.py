"""Does ptflow's latency protocol measure what it should? Three checks on the bundled model
(digits_mlp, the default pipeline: quantize=int8_dynamic, batch 150):

1. In one process, each model timed three ways — ptflow's protocol (benchmark=default),
   torch.utils.benchmark's Timer.blocked_autorange, and a naive perf_counter loop — in
   rotating order over a few rounds: medians and their % difference from torch's.
   Target: ptflow within 3% of torch.utils.benchmark.
2. Coverage: the default pipeline as N independent `ptflow` commands (each with its
   benchmark.repeats); does each one's 95% speedup interval hold the median speedup of the
   other N-1? Target: >= 8 of 10. The spread between commands and the interval widths too.
3. The same with busy loops beside it: a run flagged invalid counts as honest (it said so),
   one that misses unflagged does not. Target: >= 8 of 10.

    python bench/protocol.py [--only in-process|coverage|busy] [--runs 10] [--busy 2]
                             [--time-limit S] [overrides ...]     (e.g. benchmark.repeats=1, device=cuda)

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


def one_process(cwd: Path, overrides: list[str]) -> dict:
    result = subprocess.run([*PTFLOW, "tracking=none", *overrides], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ptflow failed ({result.returncode}):\n{result.stderr[-2000:]}")
    (path,) = sorted(cwd.glob("outputs/runs/*/*/summary.json"))[-1:]
    summary = json.loads(path.read_text())
    summary["metrics"] = json.loads((path.parent / "ptflow_result.json").read_text())["metrics"]
    return summary


def first_repeats(summary: dict, k: int):
    """The speedup interval the run would have reported with benchmark.repeats=k: its first k
    processes, combined as ptflow combines them (None when it ran fewer)."""
    sys.path.insert(0, str(ROOT))
    from ptflow.measure.hierarchy import combine
    from ptflow.measure.stats import Ratio

    m = summary["metrics"]
    if k == 1 and "benchmark.repeat.1.speedup_p50" not in m:
        low, high = summary["speedup_ci"]
        return Ratio(summary["speedup_p50"], low, high)
    keys = [f"benchmark.repeat.{i}.speedup" for i in range(1, k + 1)]
    if any(f"{key}_p50" not in m for key in keys):
        return None
    return combine([Ratio(m[f"{key}_p50"], m[f"{key}_ci_low"], m[f"{key}_ci_high"]) for key in keys]).ratio


def by_repeats(found: list) -> None:
    """Coverage had each run stopped after its first k processes: what each repeat buys."""
    most = min(int(s["metrics"].get("benchmark.repeats", 1)) for s, _ in found)
    if most < 2:
        return
    print("   had each run used only its first k processes (same runs, same processes; intervals that hold "
          "the others' median, invalid flags not counted):")
    for k in range(1, most + 1):
        ratios = [first_repeats(s, k) for s, _ in found]
        honest = 0
        for index, ratio in enumerate(ratios):
            others = statistics.median(r.value for j, r in enumerate(ratios) if j != index)
            honest += ratio.contains(others)   # flags are not counted here: they were judged over all processes
        widths = [(r.high - r.low) / r.value for r in ratios]
        print(f"     repeats={k}: coverage {honest}/{len(ratios)}, median width {statistics.median(widths) * 100:.1f}%")
    costs = [s["metrics"]["benchmark.repeats_s"] / (s["metrics"]["benchmark.repeats"] - 1) for s, _ in found
             if s["metrics"].get("benchmark.repeats", 1) > 1]
    startups = [s["metrics"]["benchmark.repeat_startup_s"] for s, _ in found if "benchmark.repeat_startup_s" in s["metrics"]]
    print(f"   each worker: start-up (parallel, untimed) median {statistics.median(startups):.1f} s; the repeat "
          f"phase costs {statistics.median(costs):.1f} s per worker (median)")


def describe(summary: dict) -> str:
    low, high = summary["speedup_ci"]
    spread = ", ".join(f"{k} {v * 100:.1f}%" for k, v in summary.get("dispersion", {}).items())
    stability = "invalid" if summary.get("invalid") else "unstable" if summary.get("unstable") else "stable"
    n = summary["latency_ms"]
    return (f"{summary['speedup_p50']:.3f}x [{low:.3f}, {high:.3f}] over {summary.get('speedup_processes', 1)} "
            f"process(es)  p50 {n['baseline']['p50']:.3f} -> {n['optimized']['p50']:.3f} ms  IQR/median {spread}  "
            f"{stability}")


def coverage(count: int, overrides: list[str], busy: int, deadline: float) -> None:
    """`count` independent `ptflow` commands: does each one's 95% interval hold the median
    speedup of the others? A run flagged invalid counts as honest (it said not to trust it)."""
    label = f"{busy} busy neighbour(s)" if busy else "a quiet machine"
    print(f"\n{'3' if busy else '2'}. coverage on {label}: {count} independent `ptflow tracking=none "
          f"{' '.join(overrides)}` commands")
    loads = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    found = []
    try:
        for index in range(count):
            if time.monotonic() > deadline:
                print(f"   time limit reached after {index} run(s)")
                break
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                summary = one_process(Path(tmp), overrides)
            wall = time.perf_counter() - started
            found.append((summary, wall))
            print(f"   run {index + 1}: {describe(summary)}  ({wall:.0f} s)", flush=True)
    finally:
        for load in loads:
            load.terminate()
        for load in loads:
            load.wait()
    if len(found) < 3:
        print("   too few runs for a coverage figure")
        return
    speedups = [s["speedup_p50"] for s, _ in found]
    held = flagged = missed = 0
    for index, (summary, _) in enumerate(found):
        others = statistics.median(speedups[:index] + speedups[index + 1:])
        low, high = summary["speedup_ci"]
        if low <= others <= high:
            held += 1
        elif summary.get("invalid"):
            flagged += 1
        else:
            missed += 1
    widths = [(s["speedup_ci"][1] - s["speedup_ci"][0]) / s["speedup_p50"] for s, _ in found]
    honest = held + flagged
    print(f"   coverage: {honest}/{len(found)} honest ({held} intervals hold the others' median, {flagged} missed "
          f"it but were flagged invalid, {missed} missed unflagged); target >= 8 of 10: "
          f"{'met' if honest >= 0.8 * len(found) else 'NOT met'}")
    print(f"   interval width (high-low)/p50: median {statistics.median(widths) * 100:.1f}%, "
          f"range {min(widths) * 100:.1f}-{max(widths) * 100:.1f}%; speedups {min(speedups):.2f}-{max(speedups):.2f}x "
          f"(spread {(max(speedups) - min(speedups)) / statistics.median(speedups) * 100:.0f}%); "
          f"wall per run: median {statistics.median(w for _, w in found):.1f} s")
    by_repeats(found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["in-process", "coverage", "busy"], action="append",
                        help="run only these checks (repeatable); default: all three")
    parser.add_argument("--runs", type=int, default=10, help="independent ptflow commands per coverage check")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the third check")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds: start no new ptflow command after this (a lent GPU's budget)")
    parser.add_argument("overrides", nargs="*", help="extra ptflow overrides, e.g. device=cuda benchmark=rigorous")
    args = parser.parse_args()
    checks = args.only or ["in-process", "coverage", "busy"]
    deadline = time.monotonic() + (args.time_limit or float("inf"))
    overrides = [f"device.threads={args.threads}", *args.overrides]
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    if "in-process" in checks:
        in_process(args.threads, args.rounds)
    if "coverage" in checks:
        coverage(args.runs, overrides, 0, deadline)
    if "busy" in checks:
        coverage(args.runs, overrides, args.busy, deadline)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
