"""What a run is called and tagged in MLflow: derived from what ran and its place in a sweep.

A run's name says what ran and tells it apart from its neighbours:

    digits_mlp-int8_dynamic-eager seed=2 @14-05-33#2

the choices of ``tracking.name_groups`` whose stage is in the pipeline, the job's own
overrides of plain keys (what a sweep varies: ``seed=2``), and where it ran: the run
dir's name, or for a sweep job the sweep dir's name and ``#<job number>``. A
``tracking.run_name`` given by the user is used as it is.

Tags carry the option of each group that shaped the run — the groups of the stages in
the pipeline plus those no stage owns (device, experiment) — ``pipeline``, and ``recipe``
(``int8_static+inductor``: what the MLflow UI groups by).
"""
from __future__ import annotations

import functools
import getpass
import hashlib
import json
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ptflow
from ptflow.core.files import CLAIM_FILE
from ptflow.core.plan import Plan
from ptflow.core.stage import load_stages
from ptflow.runs.record import RunRecord
from ptflow.runs.summary import RECIPE_GROUPS

# Top-level keys that change where or whether a run is recorded, not what it runs.
UNNAMED_KEYS = frozenset({"hydra", "tracking", "outputs_dir", "dry_run", "plugins", "tags", "reproduces"})
# Shapes the run but is named already: by the groups of its stages, and by tag `pipeline`.
NAMED_ELSEWHERE = frozenset({"pipeline"})
NAMED_OVERRIDES_CHARS = 100     # the overrides part of a run name, at most


@dataclass(frozen=True)
class JobInfo:
    """Where a run sits: alone in `run_dir`, or job `job_num` of the sweep in `sweep_dir`."""

    sweep_dir: str | None = None        # absolute; multirun only (hydra.sweep.dir)
    job_num: int | None = None          # multirun only (hydra.job.num)
    overrides: tuple[str, ...] = ()     # this job's command-line overrides (hydra.overrides.task)
    run_dir: str | None = None          # this run's own dir (hydra.runtime.output_dir)
    launch: tuple[str, ...] = ()        # -cp/-cn/-cd and hydra.searchpath it was launched with (app.job)

    @classmethod
    def from_hydra(cls, hydra_cfg: Any) -> "JobInfo":
        """From ``HydraConfig.get()`` inside a job (single run or multirun)."""
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        # as typed: resolving them here would expand (or recurse into) ${hydra:...} text
        overrides = tuple(OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False))
        job = cls(overrides=overrides, run_dir=str(hydra_cfg.runtime.output_dir))
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return cls(str(Path(hydra_cfg.sweep.dir).resolve()), int(hydra_cfg.job.num),
                       job.overrides, job.run_dir)
        return job


def run_name(plan: Plan, job: JobInfo) -> str:
    tracking = plan.settings.tracking
    if tracking.run_name:
        return tracking.run_name    # as given, even when every job of a sweep shares it
    groups = active_groups(plan)
    described = "-".join(plan.choices[g] for g in tracking.name_groups if g in groups)
    parts = [described or plan.settings.task_name, _named_overrides(plan, job.overrides), _where(job)]
    return " ".join(part for part in parts if part)


def run_tags(plan: Plan, job: JobInfo, record: RunRecord) -> dict[str, str]:
    tags = choices(plan)
    tags["pipeline"] = ",".join(planned.name for planned in plan.stages)
    tags["recipe"] = recipe_tag(tags)
    if job.sweep_dir is not None:
        tags.update({"ptflow.sweep": job.sweep_dir, "ptflow.sweep_id": sweep_id(job.sweep_dir),
                     "ptflow.job_num": str(job.job_num)})
    tags.update(source_tags())
    tags.update({"ptflow.process": record.process, "ptflow.run_dir": str(Path(record.run_dir).resolve())})
    return tags


def choices(plan: Plan) -> dict[str, str]:
    """{group: option} of the config groups that shaped the run (tags, and params as a Hydra
    user filters them: ``params.quantize = 'int8_static'``)."""
    return {group: plan.choices[group] for group in sorted(active_groups(plan))}


def recipe_tag(chosen: Mapping[str, str]) -> str:
    """The recipe in one word the MLflow UI can group by: 'int8_static+inductor' (the options of
    the recipe groups whose stage runs), or 'as loaded' when no such stage runs."""
    return "+".join(chosen[g] for g in RECIPE_GROUPS if g in chosen) or "as loaded"


def active_groups(plan: Plan) -> set[str]:
    """The chosen config groups that shaped this run: those read by a stage in the pipeline,
    and those no stage reads (device, experiment) — not hydra's, not tracking."""
    return {group for group in plan.choices if _shaped_the_run(plan, _head(group))}


def sweep_id(sweep_dir: str) -> str:
    """The unique id ptflow wrote into the sweep dir when it claimed it (ptflow.core.files.claim_dir);
    a hash of the path for a dir claimed some other way."""
    try:
        return (Path(sweep_dir) / CLAIM_FILE).read_text(encoding="utf-8").split()[1]
    except (OSError, IndexError):
        return hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:32]


def _shaped_the_run(plan: Plan, key: str) -> bool:
    """Whether the top-level config `key` affected what ran: a stage in the pipeline reads
    it, or no stage does (a run-wide setting such as device or seed)."""
    if key in UNNAMED_KEYS:
        return False
    readers = {spec.name for spec in load_stages(plan.settings.plugins).values() if key in spec.config_keys}
    return not readers or any(planned.name in readers for planned in plan.stages)


def _head(key: str) -> str:
    """The top-level config key of an override key or group path ('+benchmark.iters' -> 'benchmark')."""
    return key.lstrip("+~").split("/", 1)[0].split(".", 1)[0]


def _named_overrides(plan: Plan, overrides: Sequence[str]) -> str:
    """This job's overrides of plain keys that change what it ran, e.g. 'seed=2 benchmark.iters=50'."""
    kept = []
    for override in overrides:
        key, equals, value = override.partition("=")
        key = key.lstrip("+~")
        if not equals or key in plan.choices or key in NAMED_ELSEWHERE:   # groups are named or tagged
            continue
        if _shaped_the_run(plan, _head(key)):
            kept.append(f"{key}={value}")
    text = " ".join(kept)
    return text if len(text) <= NAMED_OVERRIDES_CHARS else text[:NAMED_OVERRIDES_CHARS - 1] + "…"


def _where(job: JobInfo) -> str:
    """'@<sweep dir name>#<job>' or '@<run dir name>': unique among the runs of one outputs dir and day."""
    if job.sweep_dir is not None and job.job_num is not None:
        return f"@{Path(job.sweep_dir).name}#{job.job_num}"
    return f"@{Path(job.run_dir).name}" if job.run_dir else ""


@functools.lru_cache(maxsize=1)   # one git look-up per process, not per job
def source_tags() -> dict[str, str]:
    tags = {"hostname": socket.gethostname(), "git_sha": "unknown", "mlflow.source.name": "ptflow",
            "mlflow.user": getpass.getuser(), "ptflow.version": ptflow.__version__}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            tags["git_sha"] = tags["mlflow.source.git.commit"] = sha.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            tags["git_dirty"] = json.dumps(bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
