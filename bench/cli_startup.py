"""How much a `ptflow` run costs beyond its work, and how fast the CLI answers (issue 19).

    python bench/cli_startup.py [--pairs 5] [--runs 5] [--help-runs 10] [--repeats-runs 0] [--tree DIR]

1. **The default run against the same work by hand**: N alternating pairs of
   ``python -m ptflow benchmark.repeats=1`` and ``python bench/by_hand.py`` (whole process,
   wall time, each in a fresh temp dir with a fresh MLflow sqlite store). One repeat, because
   by_hand times in one process too; the fresh-process repeats buy the interval's honesty and
   are not overhead: ``--repeats-runs N`` times the default (repeats included) apart. by_hand
   times for as long as the last ptflow run did (its ``benchmark.timed_s``), but ptflow's CI
   rule makes that 0.5-10 s run to run, so the verdict is on the difference *net of each one's
   warm-up + timing section* (ptflow's: the span of its device lock). Target: <= +0.5 s.
2. ``ptflow --help`` (target <= 0.1 s), a rejected config ``ptflow quantize=int8_dynamik``
   (<= 1 s) and ``ptflow dry_run=true`` (no target), median of their runs.

ptflow's runs here take their device locks in a directory of their own ($PTFLOW_LOCK_DIR):
the hand-written script waits for nobody, so ptflow must not wait for other sessions' benchmarks
either (its own early export check still holds the lock while it imports, and counts).

``--tree DIR`` measures another copy of the code (PYTHONPATH=DIR, e.g. a copy taken before a
change; its ``ptflow/stages`` and ``ptflow/conf`` must point at its ``stages/`` and ``conf/``).
The machine's load average is printed first: wall times on a busy machine are not figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BY_HAND = REPO / "bench" / "by_hand.py"
QUICK = {   # label: (argv, target seconds or None)
    "ptflow --help": (["--help"], 0.1),
    "ptflow quantize=int8_dynamik (rejected)": (["quantize=int8_dynamik"], 1.0),
    "ptflow dry_run=true": (["dry_run=true"], None),
}
OVERHEAD_TARGET_S = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="ptflow / by-hand pairs (0: skip)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the rejected config and the dry run")
    parser.add_argument("--help-runs", type=int, default=10, help="runs of --help")
    parser.add_argument("--repeats-runs", type=int, default=0, help="runs of the default, repeats included")
    parser.add_argument("--tree", type=Path, default=None, help="measure the code in this copy (PYTHONPATH)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.tree.resolve())) if args.tree else dict(os.environ)
    env["PTFLOW_LOCK_DIR"] = tempfile.mkdtemp(prefix="cli_startup-locks-")   # see the module docstring
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}; code: {args.tree or REPO}")
    for label, (argv, target) in QUICK.items():
        runs = args.help_runs if argv == ["--help"] else args.runs
        if not runs:
            continue
        times = [timed([sys.executable, "-m", "ptflow", *argv], env, check=False)[0] for _ in range(runs)]
        print(f"{label:<42} median {statistics.median(times):6.2f} s over {runs} run(s)  {verdict(times, target)}")
    if args.pairs:
        compare(args.pairs, env, args.tree or REPO)
    if args.repeats_runs:
        times = [timed([sys.executable, "-m", "ptflow"], env)[0] for _ in range(args.repeats_runs)]
        print(f"{'ptflow (default: benchmark.repeats as set)':<42} median {statistics.median(times):6.2f} s over "
              f"{args.repeats_runs} run(s)  (the repeats' own cost: this minus the runs above)")
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")


def verdict(times: list[float], target: float | None) -> str:
    if target is None:
        return ""
    return f"target <= {target:g} s: {'met' if statistics.median(times) <= target else 'NOT met'}"


def timed(command: list[str], env: dict[str, str], check: bool = True) -> tuple[float, str, dict[str, float]]:
    """(wall seconds, stdout, figures) of one run in a fresh temp dir. The figures: the CPU
    seconds of the process and its children (``cpu_s``: less sensitive than wall time to
    other work on the machine), and a ptflow run's benchmark seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if check and done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return seconds, done.stdout, {"cpu_s": cpu, **_run_figures(Path(tmp))}


def _run_figures(tmp: Path) -> dict[str, float]:
    """The benchmark seconds a ptflow run recorded (read before its temp dir goes)."""
    for record in tmp.glob("outputs/runs/*/*/ptflow_result.json"):
        metrics = json.loads(record.read_text()).get("metrics", {})
        figures = {key: metrics[key] for key in ("benchmark.timed_s", "benchmark.lock_wait_s") if key in metrics}
        if "benchmark.timed_end" in metrics:   # the device lock's span: warm-up and timing, every size
            figures["timed_section_s"] = metrics["benchmark.timed_end"] - metrics["benchmark.timed_start"]
        return figures
    return {}


def compare(pairs: int, env: dict[str, str], tree: Path) -> None:
    """Alternating pairs (ptflow first in even pairs, by hand first in odd ones); by_hand times
    as long as the last ptflow run did."""
    extra = ["benchmark.repeats=1"] if "repeats:" in (tree / "conf" / "benchmark" / "default.yaml").read_text() else []
    ptflow_cmd = [sys.executable, "-m", "ptflow", *extra]
    rows: list[dict[str, float]] = []
    last_timed = 1.0
    for pair in range(pairs):
        order = ["ptflow", "hand"] if pair % 2 == 0 else ["hand", "ptflow"]
        row: dict[str, float] = {}
        for side in order:
            if side == "ptflow":
                seconds, _, figures = timed(ptflow_cmd, env)
                last_timed = figures.get("benchmark.timed_s", last_timed)
                if figures.get("benchmark.lock_wait_s", 0) > 0.05:
                    print(f"  (pair {pair + 1}: ptflow waited {figures['benchmark.lock_wait_s']:.1f} s for the "
                          "device lock: its early export check importing, or another run timing)")
                row.update(ptflow=seconds, ptflow_timed=figures.get("timed_section_s", last_timed),
                           ptflow_cpu=figures["cpu_s"])
            else:
                seconds, out, figures = timed([sys.executable, str(BY_HAND), "--timed-s", f"{last_timed:.3f}"], env)
                row.update(hand=seconds, hand_timed=json.loads(out.strip().splitlines()[-1])["timed_section_s"],
                           hand_cpu=figures["cpu_s"])
        rows.append(row)
        print(f"  pair {pair + 1} ({' then '.join(order)}): ptflow {row['ptflow']:.2f} s, by hand {row['hand']:.2f} s, "
              f"difference {row['ptflow'] - row['hand']:+.2f} s (CPU {row['ptflow_cpu'] - row['hand_cpu']:+.2f} s)")
    _summary(rows, "ptflow " + " ".join(extra))


def _summary(rows: list[dict[str, float]], ptflow_label: str) -> None:
    def median(values) -> float:
        return statistics.median(list(values))

    def verdict(seconds: float) -> str:
        return f"target <= +{OVERHEAD_TARGET_S:g} s: {'met' if seconds <= OVERHEAD_TARGET_S else 'NOT met'}"

    net = median((r["ptflow"] - r["ptflow_timed"]) - (r["hand"] - r["hand_timed"]) for r in rows)
    print(f"{ptflow_label:<42} median {median(r['ptflow'] for r in rows):6.2f} s over {len(rows)} run(s)")
    print(f"{'python bench/by_hand.py':<42} median {median(r['hand'] for r in rows):6.2f} s over {len(rows)} run(s)")
    print(f"{'difference (median of pairs)':<42} median {median(r['ptflow'] - r['hand'] for r in rows):+6.2f} s  "
          "(includes how long ptflow's CI rule timed)")
    print(f"{'  net of each warm-up + timing section':<42} median {net:+6.2f} s  {verdict(net)}")
    cpu = median((r["ptflow_cpu"] - r["ptflow_timed"]) - (r["hand_cpu"] - r["hand_timed"]) for r in rows)
    print(f"{'  CPU s of process + children, net':<42} median {cpu:+6.2f} s  (ptflow's fresh-process export check "
          "runs beside the run)")


if __name__ == "__main__":
    main()
