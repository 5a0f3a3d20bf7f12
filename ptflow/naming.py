"""What a run is called and tagged in MLflow: derived from its plan and its place in a sweep."""
from __future__ import annotations

import getpass
import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ptflow.plan import Plan
from ptflow.record import RunRecord


@dataclass(frozen=True)
class JobInfo:
    """Where a run sits: alone, or job `job_num` of the sweep in `sweep_dir`."""

    sweep_dir: str | None = None
    job_num: int | None = None


def run_name(plan: Plan, job: JobInfo) -> str:
    tracking = plan.settings.tracking
    if tracking.run_name:
        return tracking.run_name
    picked = [plan.choices[g] for g in tracking.name_groups if g in plan.choices]
    return "-".join(picked) or plan.settings.task_name


def run_tags(plan: Plan, job: JobInfo, record: RunRecord) -> dict[str, str]:
    tags = {group: choice for group, choice in plan.choices.items() if not group.startswith("hydra")}
    if job.sweep_dir is not None:
        tags.update({"ptflow.sweep": job.sweep_dir, "ptflow.job_num": str(job.job_num)})
    tags.update(source_tags())
    tags.update({"ptflow.process": record.process, "ptflow.run_dir": str(Path(record.run_dir).resolve())})
    return tags


def source_tags() -> dict[str, str]:
    tags = {"hostname": socket.gethostname(), "git_sha": "unknown", "mlflow.source.name": "ptflow",
            "mlflow.user": getpass.getuser()}
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
