"""`ptflow-runs`: look after run records once runs are over.

  ptflow-runs relog RUN_DIR [RUN_DIR ...] [--tracking-uri URI] [--experiment NAME]
      log finished run dirs into MLflow again (after a tracking outage, or into another
      store): the run's MLflow run is completed if the store still has it, else created.
  ptflow-runs close-stale [--outputs-dir DIR | --tracking-uri URI] [--experiment NAME]
      end RUNNING runs whose process on this host is gone (SIGKILL, out of memory) as KILLED,
      or as they ended when a full disk kept their end in the run dir's reserve; remove the
      partial files those processes left.

Exit codes: 0 done, 1 something could not be done (a damaged record), 2 bad arguments or
unreachable store.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ptflow.core.lifecycle import ProcessId
from ptflow.runs.record import RESULT_FILE, RunRecord
from ptflow.runs.stale import Freed, close_record, vanished_reason
from ptflow.runs.tracking import (TrackingConfig, check_store, configure_http, prepare_or_problem, sqlite_path,
                             store_uri)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptflow-runs", description=__doc__.replace("`", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    relog = commands.add_parser("relog", help="log run dirs into MLflow again")
    relog.add_argument("run_dirs", nargs="+", type=Path)
    relog.add_argument("--tracking-uri", help="log here instead of the store the run used")
    relog.add_argument("--experiment", help="experiment name (default: the run's own)")
    stale = commands.add_parser("close-stale", help="end RUNNING runs of dead processes as KILLED")
    stale.add_argument("--outputs-dir", type=Path, default=Path("outputs"),
                       help="the outputs_dir whose mlflow.db to clean (default: outputs)")
    stale.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or None,
                       help="a tracking URI instead of <outputs-dir>/mlflow.db (default: MLFLOW_TRACKING_URI)")
    stale.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ptflow",
                       help="default: MLFLOW_EXPERIMENT_NAME, else ptflow")
    return parser


def _store(uri: str | None, experiment: str, outputs_dir: Path) -> tuple[TrackingConfig, Path, str | None]:
    """(config, outputs dir for a new experiment's artifacts, experiment id or None after an error)."""
    config = TrackingConfig(uri=uri, experiment=experiment)
    db = sqlite_path(uri) if uri else None
    if db is not None:   # a new experiment's artifacts go next to the database, as ptflow's own
        outputs_dir = db.resolve().parent
    experiment_id, problems = prepare_or_problem(config, outputs_dir.resolve())
    for problem in problems:
        print(f"ptflow-runs: {problem.render()}", file=sys.stderr)
    return config, outputs_dir.resolve(), experiment_id


def relog(run_dir: Path, uri: str | None, experiment: str | None) -> int:
    from ptflow.runs.tracker import MlflowTracker

    if not (run_dir / RESULT_FILE).is_file():
        print(f"ptflow-runs: {run_dir} holds no {RESULT_FILE}: not a ptflow run dir", file=sys.stderr)
        return 2
    try:
        record = RunRecord.load(run_dir)
    except (OSError, ValueError) as error:
        print(f"ptflow-runs: cannot re-log {run_dir}: {error}. Fix or restore that file "
              f"(a record holds a JSON object as ptflow wrote it)", file=sys.stderr)
        return 1
    if record.status == "RUNNING":
        process = ProcessId.parse(record.process)
        alive = process.is_alive() if process else None
        if alive is not False:
            state = ("is still running" if alive
                     else "says RUNNING, and whether its process lives cannot be told from this host")
            print(f"ptflow-runs: {run_dir} {state} (process {record.process}); re-log it when it has ended, "
                  "or from the host that ran it", file=sys.stderr)
            return 1
        freed = Freed()
        close_record(record, vanished_reason(process), None, freed=freed)
        if freed.files:
            print(f"ptflow-runs: {freed}")
    target = uri or record.tracking.uri
    if not target:
        print(f"ptflow-runs: {run_dir} ran without tracking; say where to log it with --tracking-uri",
              file=sys.stderr)
        return 2
    elsewhere = bool(uri) and uri != record.tracking.uri   # a copy in another store: a new run there
    original = copy.deepcopy(record.tracking)
    if elsewhere:
        record.tracking.run_id = None
    config, outputs_dir, experiment_id = _store(target, experiment or record.tracking.experiment or "ptflow",
                                                Path("outputs"))
    if experiment_id is None:
        return 2
    tracker = MlflowTracker(config, outputs_dir, record)
    tracker.replay()
    run_id = record.tracking.run_id
    if elsewhere:   # the record keeps pointing at the run's own store: a later relog there must not duplicate
        record.tracking = original
    record.save()
    if not tracker.ok:
        return 1
    print(f"re-logged {run_dir}: MLflow run {run_id} ({record.status}) in "
          f"{store_uri(config, outputs_dir)}, experiment '{config.experiment}'")
    return 0


def close_stale(outputs_dir: Path, uri: str | None, experiment: str) -> int:
    from ptflow.runs.stale import close_stale_records, close_stale_runs

    closed: list[str] = []
    freed = Freed()
    if uri or (outputs_dir / "mlflow.db").is_file():
        from mlflow.tracking import MlflowClient

        from ptflow.core.errors import did_you_mean

        config = TrackingConfig(uri=uri)
        for problem in check_store(config, outputs_dir.resolve()):
            print(f"ptflow-runs: {problem.render()}", file=sys.stderr)
            return 2
        configure_http(config)
        client = MlflowClient(tracking_uri=store_uri(config, outputs_dir.resolve()))
        found = client.get_experiment_by_name(experiment)   # looked up, never created: a typo must not
        if found is None:
            names = [e.name for e in client.search_experiments()]
            print(f"ptflow-runs: no experiment {experiment!r} in this store; it has: {', '.join(names)}"
                  + (f" — {did_you_mean(experiment, names)}" if did_you_mean(experiment, names) else ""),
                  file=sys.stderr)
            return 2
        closed = close_stale_runs(client, [found.experiment_id], freed)
    records = close_stale_records(outputs_dir, freed) if outputs_dir.is_dir() else []
    print(f"closed {len(closed)} stale MLflow run(s) and {len(records)} run record(s) "
          "(their processes on this host are gone)")
    for run_id in closed:
        print(f"  {run_id}")
    for record in records:   # the error names its stage, the kill reason the stage it stopped
        why = record.error or record.reason
        print(f"  {record.run_dir}: {record.status}" + (f": {why}" if why else ""))
    if freed.files:
        print(freed)
    return 0


def run(argv: Sequence[str]) -> int:
    from ptflow.runs.tracker import quiet_store_logs

    args = _parser().parse_args(list(argv))
    quiet_store_logs()
    if args.command == "relog":
        codes = [relog(d, args.tracking_uri, args.experiment) for d in args.run_dirs]
        return max(codes)
    return close_stale(args.outputs_dir, args.tracking_uri, args.experiment)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
