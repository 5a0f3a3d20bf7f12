"""A sweep's parent MLflow run: opened by the launching process before any job starts,
found by every job (in this process, a joblib worker or a submitit/SLURM node) through a
file in the sweep dir, and closed with the sweep's counts and its comparison.

MLflow shows a run with tag ``mlflow.parentRunId`` nested under that run. The parent
records what the sweep was (the command line as typed, its overrides as params, launcher,
sweeper; Optuna's ``optimization_results.yaml``), how it ended (``sweep/finished``,
``sweep/failed``, ``sweep/killed``; FINISHED unless no job finished, KILLED after a signal),
as artifacts under ``compare/`` the table and Pareto plot of ``ptflow.decide.compare``, and
the pick under the sweep's budget (``ptflow.runs.sweep_pick``). A tracking failure here costs
the parent, never a job.
"""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ptflow.core.errors import first_line
from ptflow.core.files import write_atomic
from ptflow.runs.record import RESULT_FILE, RunRecord, run_records

PARENTS_FILE = ".ptflow-parents.json"   # in the sweep dir: {"<uri> <experiment id>": "<parent run id>"}
PARENT_TAG = "ptflow.sweep_parent"
PARENT_ID_TAG = "mlflow.parentRunId"    # MLflow's own: the UI nests the child under the parent
OPTUNA_RESULTS = "optimization_results.yaml"   # the Optuna sweeper's best params and value, in the sweep dir


def _key(uri: str, experiment_id: str) -> str:
    return f"{uri} {experiment_id}"


def open_parents(sweep_dir: Path, stores: Iterable[tuple[str, str]], overrides: Iterable[str],
                 expected: int | None, plugins: Mapping[str, str], command: Sequence[str] = (),
                 hydra_overrides: Sequence[str] = ()) -> dict[str, str]:
    """Create one parent run per (store, experiment) and write where jobs find them. `command`:
    the whole command line as typed; `hydra_overrides`: the launcher and sweeper ones. Both
    override lists become the parent's params (quantize=none,int8_dynamic: param quantize)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from ptflow.core import lifecycle
    from ptflow.runs import naming
    from ptflow.runs.description import NOTE_TAG

    sweep_dir = Path(sweep_dir).resolve()
    overrides = list(overrides)
    jobs = f"{expected} job(s)" if expected is not None else "search"
    tags = {PARENT_TAG: "true", "ptflow.sweep": str(sweep_dir), "ptflow.sweep_id": naming.sweep_id(str(sweep_dir)),
            "ptflow.process": str(lifecycle.current_process()),
            "ptflow.command": (shlex.join(command) if command else shlex.join(["ptflow", "-m", *overrides]))[:5000],
            **{f"ptflow.{kind}": name for kind, name in plugins.items()},
            **naming.source_tags()}
    if expected is not None:
        tags["ptflow.sweep.expected"] = str(expected)
    parents: dict[str, str] = {}
    for uri, experiment_id in stores:
        try:
            client = MlflowClient(tracking_uri=uri)
            run = client.create_run(experiment_id, run_name=f"sweep {jobs} @{sweep_dir.name}", tags={
                **tags, NOTE_TAG: f"**Sweep of {jobs}**: running\n\n`{tags['ptflow.command'][:4000]}`"})
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in sweep_params(
                [*overrides, *hydra_overrides]).items()])
            client.log_text(run.info.run_id, "\n".join(overrides) + "\n", "overrides.txt")
            client.log_text(run.info.run_id, "\n".join(hydra_overrides) + "\n", "hydra_overrides.txt")
            client.log_text(run.info.run_id, tags["ptflow.command"] + "\n", "command.txt")
            parents[_key(uri, experiment_id)] = run.info.run_id
        except Exception as error:   # the jobs still run and record; only the nesting is lost
            print(f"ptflow: warning: could not create the sweep's parent MLflow run in {uri}: "
                  f"{type(error).__name__}: {first_line(error)}; the jobs run without a parent",
                  file=sys.stderr, flush=True)
    write_atomic(sweep_dir / PARENTS_FILE, json.dumps(parents, indent=2) + "\n")
    return parents


def sweep_params(overrides: Iterable[str]) -> dict[str, str]:
    """'quantize=none,int8_dynamic' -> {'quantize': 'none,int8_dynamic'}, as a Hydra user filters
    (params.quantize); '+tags.x=1' and '~export' by their key; the first of a repeated key."""
    from ptflow.runs.params import MAX_VALUE, sanitize_key

    params: dict[str, str] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = sanitize_key(key.strip().lstrip("+~")) or "override"
        params.setdefault(key, value[:MAX_VALUE] if value or not override.startswith("~") else "(deleted)")
    return dict(list(params.items())[:100])   # MLflow's log_batch takes 100 params


def parent_of(sweep_dir: str | None, uri: str, experiment_id: str | None) -> str | None:
    """The parent run id a job of `sweep_dir` logging to (uri, experiment) nests under."""
    if not sweep_dir or experiment_id is None:
        return None
    return _parents(Path(sweep_dir)).get(_key(uri, experiment_id))


def _parents(sweep_dir: Path) -> dict[str, str]:
    try:
        found = json.loads((Path(sweep_dir) / PARENTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def counts(records: list[RunRecord], expected: int | None) -> dict[str, float]:
    finished = sum(r.status == "FINISHED" for r in records)
    killed = sum(r.status == "KILLED" for r in records)
    failed = len(records) - finished - killed - sum(r.status == "RUNNING" for r in records)
    values = {"sweep/jobs": len(records), "sweep/finished": finished, "sweep/failed": failed,
              "sweep/killed": killed}
    if expected is not None:
        values["sweep/expected"] = expected
        values["sweep/not_started"] = max(expected - len(records), 0)
    return {k: float(v) for k, v in values.items()}


def status_of(records: list[RunRecord], stopped: bool) -> str:
    if stopped:
        return "KILLED"
    return "FINISHED" if any(r.status == "FINISHED" for r in records) else "FAILED"


def close_parents(sweep_dir: Path, expected: int | None, stopped_by: str | None = None) -> list[str]:
    """End each parent run: the counts, multirun.yaml, the comparison, the status. Returns
    the lines to print (where the comparison went)."""
    sweep_dir = Path(sweep_dir)
    parents = _parents(sweep_dir)
    if not parents:
        return []
    records = run_records(sweep_dir.glob(f"*/{RESULT_FILE}"))
    status = status_of(records, stopped_by is not None)
    lines: list[str] = []
    for key, run_id in parents.items():
        uri, _, experiment_id = key.rpartition(" ")
        lines += _close_one(uri, experiment_id, run_id, sweep_dir, records, expected, status, stopped_by)
    return lines


def _close_one(uri: str, experiment_id: str, run_id: str, sweep_dir: Path, records: list[RunRecord],
               expected: int | None, status: str, stopped_by: str | None) -> list[str]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from ptflow.runs.mlflow_calls import set_terminated

    try:
        client = MlflowClient(tracking_uri=uri)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in counts(records, expected).items()])
        for name in ("multirun.yaml", OPTUNA_RESULTS):
            if (sweep_dir / name).is_file():
                client.log_artifact(run_id, str(sweep_dir / name))
        _log_optuna(client, run_id, sweep_dir / OPTUNA_RESULTS)
        if stopped_by:
            client.set_tag(run_id, "ptflow.kill_reason", f"the sweep was stopped by {stopped_by}")
        written, picked = _comparison(client, experiment_id, run_id, sweep_dir)
        for path in written:
            client.log_artifact(run_id, str(path), artifact_path="compare")
        set_terminated(client, run_id, status)
    except Exception as error:   # a dead store at the end: the jobs' own records are complete
        print(f"ptflow: warning: could not close the sweep's parent MLflow run {run_id} in {uri}: "
              f"{type(error).__name__}: {first_line(error)}", file=sys.stderr, flush=True)
        return []
    from ptflow.runs import ui_links

    page = f"sweep: the parent run's page: {ui_links.run_page(uri, experiment_id, run_id)}" + \
        ("" if uri.startswith(("http://", "https://")) else f" (after: mlflow ui --backend-store-uri {uri})")
    if not written:
        return [f"sweep: parent MLflow run {run_id} ended {status}", page]
    rank = shlex.join(["ptflow-compare", "--parent", run_id, "--tracking-uri", uri])
    return [f"sweep: parent MLflow run {run_id} ended {status}; comparison (CSV, Markdown, Pareto plot) "
            f"in {written[0].parent} and its artifacts compare/; rank again: {rank}",
            *([f"sweep: {picked}"] if picked else []), page]


def _log_optuna(client: Any, run_id: str, results: Path) -> None:
    """Optuna's optimization_results.yaml as params optuna.best.<name> and metric optuna/best_value."""
    import yaml
    from mlflow.entities import Metric, Param

    from ptflow.runs.params import sanitize_key

    try:
        found = yaml.safe_load(results.read_text(encoding="utf-8")) if results.is_file() else None
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(found, dict):
        return
    best = found.get("best_params") if isinstance(found.get("best_params"), dict) else {}
    value = found.get("best_value")
    metrics = [Metric("optuna/best_value", float(value), int(time.time() * 1000), 0)] \
        if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    params = [Param(sanitize_key(f"optuna.best.{k}"), str(v)[:6000]) for k, v in list(best.items())[:90]]
    client.log_batch(run_id, metrics=metrics, params=params)


def _comparison(client: Any, experiment_id: str, run_id: str, sweep_dir: Path) -> tuple[list[Path], str]:
    """compare.csv, compare.md and pareto.png of the parent's children, in <sweep dir>/compare
    (a temp dir when the sweep dir cannot take them), and the pick recorded on the parent (a
    line saying what it is). Never fails the close."""
    from ptflow.decide import budget as budgets
    from ptflow.decide import compare as cmp

    target = sweep_dir / "compare"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        target = Path(tempfile.mkdtemp(prefix="ptflow-compare-"))
    try:
        runs = cmp.children(client, experiment_id, run_id)
        found = budgets.of_runs(runs)
        written = [Path(p) for p in cmp.write_reports(cmp.rows_from_runs(runs), target, found[0] if found else None)]
    except Exception as error:
        print(f"ptflow: warning: the sweep's comparison could not be written: {type(error).__name__}: "
              f"{first_line(error)}", file=sys.stderr, flush=True)
        return [], ""
    try:
        from ptflow.runs import sweep_pick

        return written, sweep_pick.record(client, run_id, runs, found, "picked when the sweep ended").line
    except Exception as error:
        print(f"ptflow: warning: the sweep's pick could not be recorded on its parent run {run_id}: "
              f"{type(error).__name__}: {first_line(error)}", file=sys.stderr, flush=True)
        return written, ""


def plugins_of(config: Any) -> dict[str, str]:
    """The sweep's launcher and sweeper, as tags (e.g. ptflow.launcher=JoblibLauncher)."""
    from omegaconf import OmegaConf

    found = {}
    for kind in ("launcher", "sweeper"):
        target = OmegaConf.select(config, f"hydra.{kind}._target_")
        if target:
            found[kind] = str(target).rsplit(".", 1)[-1]
    return found
