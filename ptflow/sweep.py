"""A sweep's end: the table of its jobs, or — after a signal — closing what it left open."""
from __future__ import annotations

import sys
from pathlib import Path

from ptflow.job import EXIT_TRACKING_INCOMPLETE
from ptflow.lifecycle import Interrupted
from ptflow.record import RESULT_FILE, RunRecord


def report(sweep_dir: Path, expected: int) -> int:
    """Print each job's status, p50, speedup and metric delta; return the sweep's exit code."""
    results = sorted((RunRecord.load(p.parent) for p in sweep_dir.glob(f"*/{RESULT_FILE}")),
                     key=lambda r: int(Path(r.run_dir).name) if Path(r.run_dir).name.isdigit() else 0)
    failed = [r for r in results if r.status != "FINISHED"]
    incomplete = [r for r in results if r.status == "FINISHED" and r.exit_code]
    shared = set.intersection(*(set(r.overrides) for r in results)) if len(results) > 1 else set()
    lines = [f"sweep: {len(results)}/{expected} job(s) in {sweep_dir}: "
             f"{len(results) - len(failed)} finished, {len(failed)} failed"
             + (f", {len(incomplete)} with an incomplete MLflow record" if incomplete else ""),
             f"  {'job':<42}{'status':<10}{'p50 ms':>9}{'speedup':>9}{'metric Δ':>10}  run id"]
    for result in results:
        s = result.summary or {}
        p50 = s.get("latency_ms", {}).get("optimized", {}).get("p50")
        speedup, delta = s.get("speedup_p50"), (s.get("task_metric") or {}).get("delta")
        swept = " ".join(o for o in result.overrides if o not in shared) or "(defaults)"
        lines.append(f"  {swept[:41]:<42}{result.status:<10}"
                     f"{'' if p50 is None else f'{p50:.3f}':>9}"
                     f"{'' if speedup is None else f'{speedup:.2f}x':>9}"
                     f"{'' if delta is None else f'{delta:+.4f}':>10}  {result.tracking.run_id or ''}")
    print("\n".join(lines), flush=True)
    if failed or len(results) < expected:
        return 1
    return EXIT_TRACKING_INCOMPLETE if incomplete else 0


def close(sweep_dir: Path, stop: Interrupted, stores: list[tuple[str, str]]) -> None:
    """After a signal: every job left RUNNING ends KILLED; one line says what happened."""
    from ptflow.stale import close_sweep

    client = None
    if stores:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=stores[0][0])
    reason = f"the sweep was stopped by {stop.signal_name}"
    try:
        close_sweep(sweep_dir, reason, stop.exit_code, client, [e for _, e in stores])
    except Exception as error:   # the store may be what failed; the records are closed first
        print(f"ptflow: could not close the sweep's MLflow runs: {error}", file=sys.stderr)
    records = [RunRecord.load(p.parent) for p in sweep_dir.glob(f"*/{RESULT_FILE}")]
    counts = {s: sum(r.status == s for r in records) for s in ("FINISHED", "FAILED", "KILLED")}
    print(f"ptflow: sweep stopped by {stop.signal_name}: {counts['FINISHED']} finished, "
          f"{counts['FAILED']} failed, {counts['KILLED']} ended KILLED; records in {sweep_dir}",
          file=sys.stderr)
