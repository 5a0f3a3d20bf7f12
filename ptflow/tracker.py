"""MLflow as a mirror of the run's record: an engine hook, never code inside a stage.

The run's own record (``ptflow.record.RunRecord``) is the truth; this hook copies it into
MLflow as the run goes. A tracking failure never fails the run: the first one is
reported once, later calls are skipped (no minutes of retries), and the record says the
mirror is incomplete so ``ptflow-runs relog`` can finish it later. ``replay`` is that
relog: the same calls, fed from a saved record.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ptflow.params import sanitize_key, to_params
from ptflow.record import RunRecord, Tracking
from ptflow.errors import first_line
from ptflow.tracking import TrackingConfig, prepare, store_uri

if TYPE_CHECKING:
    from ptflow.artifact import Artifact, StageRecord
    from ptflow.plan import Plan
    from ptflow.stage import RunContext

MAX_TAG = 5000
TEXT_FILES = ("config.yaml", "plan.txt")       # written by the job into the run dir
T = TypeVar("T")


def relog_command(run_dir: str) -> str:
    return f"ptflow-runs relog {run_dir}"


class MlflowTracker:
    """Engine hook: opens the run, mirrors params/tags/metrics/artifacts, closes it."""

    def __init__(self, config: TrackingConfig, outputs_dir: Path, record: RunRecord):
        self.config = config
        self.record = record
        self.uri = store_uri(config, outputs_dir)
        self.outputs_dir = outputs_dir
        record.tracking = Tracking(self.uri, config.experiment, record.tracking.run_id)
        self.run_id: str | None = None
        self.error: str | None = None
        self._logged_metrics: set[str] = set()
        self.client = None
        self.experiment_id = self._call(self._connect)

    @property
    def ok(self) -> bool:
        return self.error is None

    # -- engine hooks ------------------------------------------------------------
    def before_run(self, plan: "Plan", ctx: "RunContext") -> None:
        self._call(self._start)

    def after_stage(self, stage: "StageRecord", artifact: "Artifact") -> None:
        self._call(self._log_metrics, artifact.metrics)

    def warn(self, key: str, message: str) -> None:
        if self.run_id:
            self._call(self.client.set_tag, self.run_id, f"ptflow.warning.{key}", message[:MAX_TAG])

    # -- called by the job runner, and by relog ------------------------------------
    def end(self) -> None:
        """Log what the run produced and its final status (from the record). The status is
        tried even after a failure (a full artifact store, a blip), so that the MLflow run is
        not left RUNNING when the store can still take it."""
        if self.run_id:
            self._call(self._log_outcome)
            self._terminate()
        self.record.tracking.complete = self.ok and self.run_id is not None

    def replay(self) -> None:
        """Mirror a saved record: reuse its MLflow run if the store still has it, else a new one."""
        if self.client is None:
            return
        existing = self._call(self._find_run, self.record.tracking.run_id)
        if existing is None:
            self._call(self._start)
        else:
            self.run_id = existing.info.run_id
            self._logged_metrics = set(existing.data.metrics)
            self._call(self._log_params, set(existing.data.params))
        self._call(self._log_metrics, self.record.metrics)
        self.end()

    # -- MLflow calls --------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run one MLflow call; the first failure is reported once and disables the rest."""
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except Exception as error:   # any store/network failure; signals (BaseException) still unwind
            self._failed(error)
            return None

    def _failed(self, error: Exception) -> None:
        if self.error is not None:
            return
        self.error = f"{type(error).__name__}: {first_line(error)}"
        self.record.tracking.error = self.error
        run_dir = self.record.run_dir
        print(f"ptflow: MLflow tracking at {self.uri} failed: {self.error}\n"
              f"ptflow: the run goes on; its full record stays in {run_dir}. "
              f"Re-log it once the store works: {relog_command(run_dir)}", file=sys.stderr, flush=True)

    def _connect(self) -> str:
        from mlflow.tracking import MlflowClient

        experiment_id = prepare(self.config, self.outputs_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        return experiment_id

    def _find_run(self, run_id: str | None):
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.experiment_id == self.experiment_id else None

    def _start(self) -> None:
        record = self.record
        tags = {**record.tags, **{f"ptflow.warning.{k}": v[:MAX_TAG] for k, v in record.warnings.items()}}
        run = self.client.create_run(self.experiment_id, run_name=record.run_name, tags=tags)
        self.run_id = record.tracking.run_id = run.info.run_id
        self._log_params(set())
        for name in TEXT_FILES:
            path = Path(record.run_dir) / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.log_text(self.run_id, "\n".join(record.overrides) + "\n", "overrides.txt")

    def _log_params(self, present: set[str]) -> None:
        params, long_values = to_params(self.record.config)
        params.update({f"system.{k}": str(v) for k, v in self.record.settings.items()})
        self._log_batch(params={k: v for k, v in params.items() if k not in present})
        if long_values:
            self.client.log_dict(self.run_id, long_values, "params_long.json")

    def _log_metrics(self, metrics: Mapping[str, float]) -> None:
        fresh = {sanitize_key(k): v for k, v in metrics.items() if v is not None}
        fresh = {k: v for k, v in fresh.items() if k not in self._logged_metrics}
        self._log_batch(metrics=fresh)
        self._logged_metrics.update(fresh)

    def _terminate(self) -> None:
        status = "FAILED" if self.record.status == "CONFIG_ERROR" else self.record.status
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as error:   # reported already if the store is down; else report now
            self._failed(error)

    def _log_outcome(self) -> None:
        record = self.record
        run_dir = Path(record.run_dir)
        summary = run_dir / "summary.json"
        if summary.is_file():
            self.client.log_artifact(self.run_id, str(summary))
        for name, text_path in record.files.items():
            path = Path(text_path)
            if path.is_file() and (self.config.log_exports or path.suffix == ".json"):
                self.client.log_artifact(self.run_id, str(path), artifact_path=f"files/{name}")
        error_file = run_dir / "error.txt"
        if record.error:
            self.client.set_tag(self.run_id, "ptflow.error", record.error[:MAX_TAG])
            if error_file.is_file():
                self.client.log_artifact(self.run_id, str(error_file))
        if record.reason:
            self.client.set_tag(self.run_id, "ptflow.kill_reason", record.reason[:MAX_TAG])

    def _log_batch(self, params: Mapping[str, str] | None = None,
                   metrics: Mapping[str, float] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        for start in range(0, len(param_list), 100):   # MLflow's per-batch limit
            self.client.log_batch(self.run_id, params=param_list[start:start + 100])
        for start in range(0, len(metric_list), 1000):
            self.client.log_batch(self.run_id, metrics=metric_list[start:start + 1000])
