"""Which runs of an MLflow store `ptflow-compare` compares: the last sweep (its parent run's
children), a sweep id or prefix, a parent run, every run of an experiment, narrowed by a
filter string. Parent runs are never rows. Errors say what exists instead."""
from __future__ import annotations

import contextlib
import datetime
import re
from pathlib import Path
from typing import Any

PAGE = 1000                              # MLflow's largest page of search_runs
PARENT_TAG, PARENT_ID_TAG, SWEEP_TAG = "ptflow.sweep_parent", "mlflow.parentRunId", "ptflow.sweep_id"
LATEST_SWEEPS = 5                        # how many sweeps an error lists
SAFE_ID = re.compile(r"^[0-9A-Za-z_-]+$")   # what a run or sweep id may hold (it goes into a filter string)


class SelectionError(Exception):
    """Exit 2: the experiment, sweep, parent or filter named matches nothing; says what exists."""


def search_all(client: Any, experiment_id: str, filter_string: str = "", limit: int | None = None) -> list[Any]:
    """Every run matching `filter_string`, newest first, paged through (at most `limit`)."""
    runs: list[Any] = []
    token = None
    while limit is None or len(runs) < limit:
        page = client.search_runs([experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"],
                                  max_results=min(PAGE, limit or PAGE), page_token=token)
        runs.extend(page)
        if not (token := page.token):
            break
    return runs[:limit] if limit else runs


def is_parent(run: Any) -> bool:
    return run.data.tags.get(PARENT_TAG) == "true"


def is_recipe_run(run: Any) -> bool:
    """A pipeline run: not a sweep's parent, not a serving load test (``ptflow-serve --loadtest``
    records one beside the run it served, tagged ``ptflow.kind=loadtest``)."""
    return not is_parent(run) and run.data.tags.get("ptflow.kind") != "loadtest"


def _when(run: Any) -> str:
    return datetime.datetime.fromtimestamp((run.info.start_time or 0) / 1000).strftime("%Y-%m-%d %H:%M:%S")


def latest_sweeps(client: Any, experiment_id: str) -> str:
    """The newest sweeps of the experiment, one line each, for error messages: sweep id prefix,
    name, start time, number of runs, and the flag that selects it."""
    parents = search_all(client, experiment_id, f"tags.{PARENT_TAG} = 'true'", limit=LATEST_SWEEPS)
    lines = [f"  {p.data.tags.get(SWEEP_TAG, '?')[:8]}  {p.info.run_name}  started {_when(p)}  "
             f"{len(search_all(client, experiment_id, f'tags.{PARENT_ID_TAG} = {p.info.run_id!r}'))} run(s)  "
             f"(--parent {p.info.run_id})" for p in parents]
    if not lines:   # a store from before parent runs: sweeps only by their tag
        groups: dict[str, list[Any]] = {}
        for run in search_all(client, experiment_id, limit=PAGE):
            if run.data.tags.get(SWEEP_TAG):
                groups.setdefault(run.data.tags[SWEEP_TAG], []).append(run)
        lines = [f"  {sid[:8]}  {Path(runs[0].data.tags.get('ptflow.sweep', '?')).name}  started {_when(runs[-1])}  "
                 f"{len(runs)} run(s)  (--sweep {sid[:8]})" for sid, runs in list(groups.items())[:LATEST_SWEEPS]]
    return ("the latest sweeps here:\n" + "\n".join(lines)) if lines else "this experiment holds no sweep"


def _by_parent(client: Any, experiment_id: str, parent: str) -> tuple[str, str, str]:
    """(description, filter, experiment id) for the children of parent run `parent`."""
    from mlflow.exceptions import MlflowException

    found = None
    with contextlib.suppress(MlflowException):
        found = client.get_run(parent) if SAFE_ID.match(parent) else None
    if found is None:
        raise SelectionError(f"--parent {parent!r} is no run in this store; pass the parent run id the sweep "
                             f"printed. {latest_sweeps(client, experiment_id)}")
    sweep = found.data.tags.get(SWEEP_TAG, "")
    return (f"sweep {sweep[:8] or '?'} '{found.info.run_name}' (parent run {found.info.run_id}, started "
            f"{_when(found)})", f"tags.{PARENT_ID_TAG} = '{found.info.run_id}'", found.info.experiment_id)


def _by_sweep(client: Any, experiment_id: str, sweep: str) -> tuple[str, str]:
    """(description, filter) for the runs tagged with sweep id `sweep` or a unique prefix of one."""
    found = search_all(client, experiment_id, f"tags.{SWEEP_TAG} LIKE '{sweep}%'", limit=PAGE) \
        if SAFE_ID.match(sweep) else []
    ids = [sweep] if any(r.data.tags[SWEEP_TAG] == sweep for r in found) else \
        sorted({r.data.tags[SWEEP_TAG] for r in found})
    if len(ids) != 1:
        why = f"begins {len(ids)} sweep ids; give more of it" if ids else "matches no sweep id here"
        raise SelectionError(f"--sweep {sweep!r} {why}. {latest_sweeps(client, experiment_id)}")
    where = next((r.data.tags.get("ptflow.sweep") for r in found if r.data.tags[SWEEP_TAG] == ids[0]), None) or "?"
    return f"sweep {ids[0][:8]} ({where})", f"tags.{SWEEP_TAG} = '{ids[0]}'"


def _last_sweep(client: Any, experiment_id: str, experiment: str) -> tuple[str, str, str]:
    """The most recently started parent run's children; before parent runs existed, the
    runs of the newest ptflow.sweep_id."""
    parents = search_all(client, experiment_id, f"tags.{PARENT_TAG} = 'true'", limit=1)
    if parents:
        return _by_parent(client, experiment_id, parents[0].info.run_id)
    latest = next((r for r in search_all(client, experiment_id, limit=PAGE) if r.data.tags.get(SWEEP_TAG)), None)
    if latest is None:
        raise SelectionError(f"experiment '{experiment}' holds no sweep (no run tagged {PARENT_TAG} or {SWEEP_TAG}); "
                             "run one (ptflow -m quantize=none,int8_dynamic), or pass --all to compare every run")
    return (*_by_sweep(client, experiment_id, latest.data.tags[SWEEP_TAG]), experiment_id)


def select_runs(client: Any, experiment: str, *, sweep: str | None = None, parent: str | None = None,
                filter_string: str | None = None, all_runs: bool = False) -> tuple[str, list[Any]]:
    """(what was selected, its runs newest first). Default: the last sweep. Parent runs are
    never returned. Raises SelectionError when the experiment, sweep or parent is unknown,
    the filter is malformed, or nothing matches."""
    from mlflow.exceptions import MlflowException

    if sum(bool(x) for x in (sweep, parent, all_runs)) > 1:
        raise SelectionError("--sweep, --parent and --all each choose the runs: give one (--filter narrows any)")
    found = client.get_experiment_by_name(experiment)   # looked up, never created
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise SelectionError(f"no experiment {experiment!r} in this store; it has: {', '.join(names) or 'none'}; "
                             "pass --experiment NAME")
    experiment_id = found.experiment_id
    if parent:
        description, base, experiment_id = _by_parent(client, experiment_id, parent)
    elif sweep:
        description, base = _by_sweep(client, experiment_id, sweep)
    elif all_runs:
        description, base = f"every run of experiment '{experiment}'", ""
    else:
        description, base, experiment_id = _last_sweep(client, experiment_id, experiment)
    try:
        found_runs = search_all(client, experiment_id, " AND ".join(f for f in (base, filter_string) if f))
        runs = [run for run in found_runs if is_recipe_run(run)]
    except MlflowException as error:
        raise SelectionError(f"--filter {filter_string!r} was refused by MLflow: {str(error).splitlines()[0]}; "
                             "write it as MLflow's search syntax, e.g. \"tags.quantize != 'none'\"") from None
    description += f", filtered by {filter_string!r}" if filter_string else ""
    if not runs:
        raise SelectionError(f"{description}: no runs. {latest_sweeps(client, experiment_id)}")
    return description, runs
