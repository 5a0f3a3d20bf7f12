"""MLflow as the record: a hook on the engine, never code inside a stage.

``prepare`` runs once in the launching process (schema + experiment, so parallel jobs
never race on them); ``MlflowTracker`` is the per-run subscriber. mlflow is imported
lazily: it costs ~1.4 s and the CLI must stay quick to reject a bad config.
"""
from __future__ import annotations

import enum
import getpass
import json
import logging
import socket
import subprocess
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.params import sanitize_key, to_params

if TYPE_CHECKING:
    from ptflow.artifact import Artifact, StageRecord
    from ptflow.plan import Plan
    from ptflow.stage import RunContext

log = logging.getLogger(__name__)
MAX_TAG = 5000


class TrackingBackend(str, enum.Enum):
    MLFLOW = "mlflow"
    NONE = "none"


@dataclass(frozen=True)
class TrackingConfig:
    backend: TrackingBackend = TrackingBackend.MLFLOW
    uri: str | None = None            # null: sqlite:///<absolute outputs_dir>/mlflow.db
    experiment: str = "ptflow"
    run_name: str | None = None       # null: the choices of `name_groups`, joined
    name_groups: tuple[str, ...] = ("model", "quantize", "compile")
    log_exports: bool = True          # copy exported model files into the run's artifacts

    @property
    def enabled(self) -> bool:
        return self.backend is TrackingBackend.MLFLOW


def store_uri(config: TrackingConfig, outputs_dir: Path) -> str:
    return config.uri or f"sqlite:///{(outputs_dir / 'mlflow.db').resolve()}"


def prepare(config: TrackingConfig, outputs_dir: Path) -> str:
    """Create the DB schema and the experiment (once, before any job); return its id."""
    from mlflow.tracking import MlflowClient

    uri = store_uri(config, outputs_dir)
    if uri.startswith("sqlite:"):
        outputs_dir.mkdir(parents=True, exist_ok=True)
    db_log = logging.getLogger("mlflow.store.db.utils")   # "Creating initial MLflow database tables..."
    level = db_log.level
    db_log.setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.experiment)
    finally:
        db_log.setLevel(level)
    if experiment is None:
        location = None
        if uri.startswith(("sqlite:", "file:")):
            location = (outputs_dir / "mlartifacts").resolve().as_uri()
        return client.create_experiment(config.experiment, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", config.experiment)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


@dataclass(frozen=True)
class RunInfo:
    """What the launcher knows about this run, beyond the plan."""

    config: Mapping[str, Any]              # resolved, without the hydra node
    config_yaml: str
    overrides: Sequence[str] = ()
    extra_tags: Mapping[str, str] = field(default_factory=dict)


class MlflowTracker:
    """Engine hook: opens the run, records params/tags/metrics/artifacts, closes it."""

    def __init__(self, config: TrackingConfig, outputs_dir: Path, info: RunInfo):
        from mlflow.tracking import MlflowClient

        self.config = config
        self.uri = store_uri(config, outputs_dir)
        self.experiment_id = prepare(config, outputs_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.info = info
        self.run_id: str | None = None
        self._open = False
        self._logged_metrics: set[str] = set()

    # -- engine hooks ------------------------------------------------------------
    def before_run(self, plan: "Plan", ctx: "RunContext") -> None:
        tags = {group: choice for group, choice in plan.choices.items() if not group.startswith("hydra")}
        tags.update(self.info.extra_tags)
        tags.update(_source_tags())
        run = self.client.create_run(self.experiment_id, run_name=self._run_name(plan), tags=tags)
        self.run_id, self._open = run.info.run_id, True
        params, long_values = to_params(self.info.config)
        params.update({f"system.{k}": str(v) for k, v in ctx.settings.items()})
        self._log_batch(params=params)
        if long_values:
            self.client.log_dict(self.run_id, long_values, "params_long.json")
        self.client.log_text(self.run_id, self.info.config_yaml, "config.yaml")
        self.client.log_text(self.run_id, "\n".join(self.info.overrides) + "\n", "overrides.txt")
        self.client.log_text(self.run_id, plan.render() + "\n", "plan.txt")

    def after_stage(self, record: "StageRecord", artifact: "Artifact") -> None:
        fresh = {k: v for k, v in artifact.metrics.items() if k not in self._logged_metrics}
        self._log_batch(metrics=fresh)
        self._logged_metrics.update(fresh)

    def after_run(self, artifact: "Artifact | None", error: BaseException | None) -> None:
        if error is not None:
            self.fail(error)

    # -- called by the job runner ----------------------------------------------------
    def finish(self, summary_path: Path, files: Mapping[str, Path]) -> None:
        """Log the summary and the run's files, then mark the run FINISHED."""
        self.client.log_artifact(self.run_id, str(summary_path))
        for name, path in files.items():
            if path.is_file() and (self.config.log_exports or path.suffix == ".json"):
                self.client.log_artifact(self.run_id, str(path), artifact_path=f"files/{name}")
        self._end("FINISHED")

    def fail(self, error: BaseException) -> None:
        if not self._open:
            return
        text = str(error) or type(error).__name__
        detail = "".join(traceback.format_exception(error))
        self.client.set_tag(self.run_id, "ptflow.error", text[:MAX_TAG])
        self.client.log_text(self.run_id, f"{text}\n\n{detail}", "error.txt")
        self._end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def close(self) -> None:
        """Safety net for `finally`: a run still open here did not finish cleanly."""
        if self._open:
            self.fail(RuntimeError("the run ended before ptflow could record its result"))

    # -- helpers -------------------------------------------------------------------------
    def _end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
        self._open = False

    def _run_name(self, plan: "Plan") -> str:
        if self.config.run_name:
            return self.config.run_name
        picked = [plan.choices[g] for g in self.config.name_groups if g in plan.choices]
        return "-".join(picked) or plan.settings.task_name

    def _log_batch(self, params: Mapping[str, str] | None = None,
                   metrics: Mapping[str, float] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        metric_list = [Metric(sanitize_key(k), float(v), now, 0) for k, v in (metrics or {}).items()
                       if v is not None]
        for start in range(0, len(param_list), 100):   # MLflow's per-batch limit
            self.client.log_batch(self.run_id, params=param_list[start:start + 100])
        for start in range(0, len(metric_list), 1000):
            self.client.log_batch(self.run_id, metrics=metric_list[start:start + 1000])


def _source_tags() -> dict[str, str]:
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
