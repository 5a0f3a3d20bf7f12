"""MLflow as a mirror of the run's record: an engine hook, never code inside a stage.

The run's own record (``ptflow.runs.record.RunRecord``) is the truth; this hook copies it into
MLflow as the run goes. A tracking failure never fails the run: the first one is
reported once, later calls are skipped (no minutes of retries), and the record says the
mirror is incomplete so ``ptflow-runs relog`` can finish it later; the MLflow run itself
says so too, with tag ``ptflow.incomplete`` (set best effort, since the store may be what
failed; a complete relog removes it). ``replay`` is that relog: the same calls, fed from a
saved record.

MLflow conventions kept here, at the boundary: metric keys group by stage with a '/'
(``mlflow_metric_key``); the data a run used is logged with MLflow's dataset API; a
one-line ``ptflow.summary`` tag fills the runs table; optional system metrics pause while
the benchmark stage times.
"""
from __future__ import annotations

import importlib.util
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ptflow.core.errors import first_line
from ptflow.core.files import describe_disk_full
from ptflow.core.typed import to_plain
from ptflow.runs import description, summary
from ptflow.runs.description import NOTE_TAG
from ptflow.runs.mlflow_calls import mlflow_quiet, retry_lost_race, set_terminated
from ptflow.runs.mlflow_datasets import dataset_key, mlflow_dataset
from ptflow.runs.params import sanitize_key, to_params
from ptflow.runs.record import RunRecord, Tracking
from ptflow.runs.tracking import TrackingConfig, prepare, store_uri

if TYPE_CHECKING:
    from ptflow.core.artifact import Artifact, StageRecord
    from ptflow.core.plan import Plan, PlannedStage
    from ptflow.core.stage import RunContext

MAX_TAG = 5000
TEXT_FILES = ("config.yaml", "plan.txt")       # written by the job into the run dir
QUIET_STAGES = frozenset({"benchmark"})        # no system-metrics sampling while these time
INCOMPLETE_TAG = "ptflow.incomplete"           # why the MLflow run lacks part of the record
STORE_LOGGERS = ("mlflow.store.db.utils",)     # log every SQLAlchemy failure with its whole traceback
T = TypeVar("T")
log = logging.getLogger(__name__)


def quiet_store_logs() -> None:
    """MLflow logs each failed database call with an 85-line SQLAlchemy traceback before it
    raises; ptflow reports the failure itself, in one line (``describe_failure``)."""
    for name in STORE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def describe_failure(error: BaseException, uri: str) -> str:
    """One line for a failed MLflow call; a full disk says so first."""
    full = describe_disk_full(error, f"the MLflow store {uri}")   # a copy into its artifacts names no file
    if full is not None:
        return full
    text = "\n".join(line for line in str(error).splitlines() if not line.startswith("(raised as a result of"))
    return f"{type(error).__name__}: {first_line(Exception(text))}"   # without SQLAlchemy's preamble


def rerun_command(record: RunRecord) -> str:
    """The `ptflow` command line that composes this run's config again, from any directory: the
    config dirs it was launched with (absolute) and its overrides. ptflow-compare adds the store."""
    return shlex.join(["ptflow", *record.launch, *record.overrides])


def relog_command(run_dir: str) -> str:
    return f"ptflow-runs relog {run_dir}"


def mlflow_metric_key(name: str) -> str:
    """A ptflow metric name as an MLflow key: its first dot becomes '/', because MLflow's UI
    groups charts by the part before the first '/' ('benchmark.candidate.p50_ms' ->
    'benchmark/candidate.p50_ms'). ptflow's own files keep the dotted names."""
    return sanitize_key(name.replace(".", "/", 1))


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
        self._logged_datasets: set[tuple[str, str, str]] = set()
        self._logged_tags: dict[str, str] = {}
        self._sample_system = False
        self._monitor = None           # MLflow's SystemMetricsMonitor while it samples
        self._incomplete_tagged = False   # the run carries INCOMPLETE_TAG (from an earlier attempt)
        self.client = None
        quiet_store_logs()
        self.experiment_id = self._call(self._connect)
        record.tracking.experiment_id = self.experiment_id

    @property
    def ok(self) -> bool:
        return self.error is None

    # -- engine hooks ------------------------------------------------------------
    def before_run(self, plan: "Plan", ctx: "RunContext") -> None:
        self._call(self._start)
        if self.config.system_metrics and self.run_id:
            self._sample_system = importlib.util.find_spec("psutil") is not None
            if not self._sample_system:
                self._warn("tracking.system_metrics", "tracking.system_metrics=true needs psutil "
                           "(pip install psutil): this run logs no system metrics")
            self._start_monitor(resume=False)

    def before_stage(self, planned: "PlannedStage", artifact: "Artifact | None") -> None:
        if planned.name in QUIET_STAGES:
            self._stop_monitor()      # sampling threads would compete with the timed calls

    def after_stage(self, stage: "StageRecord", artifact: "Artifact") -> None:
        self._call(self._log_metrics, artifact.metrics)
        self._call(self._log_series, artifact.series)
        self._call(self._log_tags, artifact.tags)
        self._call(self._log_datasets, [to_plain(info) for info in artifact.datasets])
        if stage.name in QUIET_STAGES:
            self._start_monitor(resume=True)

    def warn(self, key: str, message: str) -> None:
        if self.run_id:
            self._call(self.client.set_tag, self.run_id, f"ptflow.warning.{key}", message[:MAX_TAG])

    # -- called by the job runner, and by relog ------------------------------------
    def end(self) -> None:
        """Log what the run produced and its final status (from the record). The status is
        tried even after a failure (a full artifact store, a blip), so that the MLflow run is
        not left RUNNING when the store can still take it."""
        self._stop_monitor()
        if self.run_id:
            self._call(self._log_outcome)
            self._mark_completeness()
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
            self._incomplete_tagged = INCOMPLETE_TAG in existing.data.tags
            self._logged_metrics = set(existing.data.metrics)
            self._logged_datasets = {dataset_key(i.dataset.name, i.dataset.digest, tag.value)
                                     for i in existing.inputs.dataset_inputs
                                     for tag in i.tags if tag.key == "mlflow.data.context"}
            self._call(self._describe, set(existing.data.params), True)   # what the outage may have cost
        self._call(self._log_metrics, self.record.metrics)
        self._call(self._log_series, self.record.series)
        self._call(self._log_datasets, self.record.datasets)
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
        log.debug("MLflow call failed", exc_info=error)   # the traceback, for ptflow.log only
        self.error = describe_failure(error, self.uri)
        self.record.tracking.error = self.error
        run_dir = self.record.run_dir
        print(f"ptflow: MLflow tracking at {self.uri} failed: {self.error}\n"
              f"ptflow: the run goes on; its full record stays in {run_dir}. "
              f"Re-log it once the store works: {relog_command(run_dir)}", file=sys.stderr, flush=True)

    def _warn(self, key: str, message: str) -> None:
        """A warning of the tracker's own, recorded as the job records a stage's warning."""
        self.record.warnings[key] = message
        print(f"ptflow: warning: {message}", file=sys.stderr, flush=True)
        self.warn(key, message)

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

    def _tags(self) -> dict[str, str]:
        record = self.record
        return {**record.tags, **{f"ptflow.warning.{k}": v[:MAX_TAG] for k, v in record.warnings.items()}}

    def _start(self) -> None:
        from ptflow.runs.sweep_parent import PARENT_ID_TAG, parent_of

        tags = self._tags()
        parent = parent_of(self.record.tags.get("ptflow.sweep"), self.uri, self.experiment_id)
        if parent:   # a sweep job: MLflow nests it under the sweep's parent run
            tags[PARENT_ID_TAG] = parent
        tags[NOTE_TAG] = description.running(self.record)
        run = self.client.create_run(self.experiment_id, run_name=self.record.run_name, tags=tags)
        self.run_id = self.record.tracking.run_id = run.info.run_id
        self._describe(set())

    def _describe(self, params_present: set[str], existing: bool = False) -> None:
        """Params, tags and the run's text files (config, plan, overrides)."""
        from mlflow.entities import RunTag

        record = self.record
        if existing:   # a run made before an outage: its tags may be incomplete
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._tags().items()])
        self._log_params(params_present)
        for name in TEXT_FILES:
            path = Path(record.run_dir) / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.log_text(self.run_id, "\n".join(record.overrides) + "\n", "overrides.txt")
        self.client.log_text(self.run_id, rerun_command(record) + "\n", "command.txt")

    def _log_params(self, present: set[str]) -> None:
        params, long_values = to_params(self.record.config)
        params.update({f"system.{k}": str(v) for k, v in self.record.settings.items()})
        # the group choices as a Hydra user names them (params.quantize = 'int8_static'), unless a
        # config key of that name already is a param
        params.update({k: v for k, v in self.record.choices.items() if k not in params})
        self._log_batch(params={k: v for k, v in params.items() if k not in present})
        if long_values:
            self.client.log_dict(self.run_id, long_values, "params_long.json")

    def _log_metrics(self, metrics: Mapping[str, float]) -> None:
        fresh = {mlflow_metric_key(k): v for k, v in metrics.items() if v is not None}
        fresh = {k: v for k, v in fresh.items() if k not in self._logged_metrics}
        self._log_batch(metrics=fresh)
        self._logged_metrics.update(fresh)

    def _log_series(self, series: Mapping[str, Iterable[float]]) -> None:
        """Per-step metrics (MLflow's step axis), each logged once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for name, values in series.items():
            key = mlflow_metric_key(name)
            if key in self._logged_metrics:
                continue
            points = [Metric(key, float(v), now, step) for step, v in enumerate(values)]
            for start in range(0, len(points), 1000):
                self.client.log_batch(self.run_id, metrics=points[start:start + 1000])
            self._logged_metrics.add(key)

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        fresh = {k: v for k, v in tags.items() if self._logged_tags.get(k) != v}
        if fresh:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v[:MAX_TAG]) for k, v in fresh.items()])
            self._logged_tags.update(fresh)

    def _log_datasets(self, datasets: Iterable[Mapping[str, Any]]) -> None:
        from mlflow.entities import DatasetInput, InputTag

        fresh = {dataset_key(d["name"], d["digest"], d["context"]): d for d in datasets}
        fresh = {key: d for key, d in fresh.items() if key not in self._logged_datasets}
        if fresh:
            # parallel jobs share the eval data: a lost insert race is retried (log_inputs is idempotent)
            retry_lost_race(self.client.log_inputs, self.run_id, [
                DatasetInput(mlflow_dataset(d), tags=[InputTag("mlflow.data.context", str(d["context"]))])
                for d in fresh.values()])
            self._logged_datasets.update(fresh)

    def _start_monitor(self, resume: bool) -> None:
        """MLflow's system-metrics sampler (``create_run`` never starts one): a thread that
        logs ``system/...`` metrics every ``system_metrics_interval_s``. A stopped monitor
        cannot restart, so after a quiet stage a new one resumes at the next step."""
        if not self._sample_system or self.run_id is None or self.error is not None:
            return

        def start():
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # its INFO lines ("Started monitoring...") and a dead store's warnings: ptflow reports once
            logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.config.system_metrics_interval_s,
                                           resume_logging=resume, tracking_uri=self.uri)
            monitor.start()
            return monitor

        self._monitor = self._call(start)

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()     # wakes and joins the sampling thread, then logs what it sampled
            except Exception as error:   # the store failed under it: reported like any tracking failure
                self._failed(error)

    def _mark_completeness(self) -> None:
        """Tag a run that lacks part of the record (best effort: the store may be what fails);
        untag it once a relog has logged everything."""
        if self.error is not None:
            try:
                reason = f"{self.error}; the run dir holds it all: {relog_command(self.record.run_dir)}"
                self.client.set_tag(self.run_id, INCOMPLETE_TAG, reason[:MAX_TAG])
            except Exception:   # the store refuses even this: the record and the console say it
                pass
        elif self._incomplete_tagged:
            self._call(self.client.delete_tag, self.run_id, INCOMPLETE_TAG)

    def _terminate(self) -> None:
        status = "FAILED" if self.record.status == "CONFIG_ERROR" else self.record.status
        try:
            set_terminated(self.client, self.run_id, status)
        except Exception as error:   # reported already if the store is down; else report now
            self._failed(error)

    def _log_outcome(self) -> None:
        record = self.record
        run_dir = Path(record.run_dir)
        if record.summary:
            self.client.set_tag(self.run_id, "ptflow.summary", summary.one_line(record.summary)[:MAX_TAG])
        self.client.set_tag(self.run_id, NOTE_TAG, description.ended(record)[:MAX_TAG])
        summary_file = run_dir / "summary.json"
        if summary_file.is_file():
            self.client.log_artifact(self.run_id, str(summary_file))
        for name, text_path in record.files.items():
            path = Path(text_path)
            # log_exports=false keeps the (large) model files out; the benchmark's figures always go
            if path.is_file() and (self.config.log_exports or not name.startswith("export.") or path.suffix == ".json"):
                self.client.log_artifact(self.run_id, str(path), artifact_path=f"files/{name}")
        error_file = run_dir / "error.txt"
        if record.error:
            self.client.set_tag(self.run_id, "ptflow.error", record.error[:MAX_TAG])
            if error_file.is_file():
                self.client.log_artifact(self.run_id, str(error_file))
        if record.reason:
            self.client.set_tag(self.run_id, "ptflow.kill_reason", record.reason[:MAX_TAG])
        manifest = record.files.get("export.manifest")
        if record.status == "FINISHED" and self.config.log_models and manifest and Path(manifest).is_file():
            self._log_models(Path(manifest))

    def _log_models(self, manifest: Path) -> None:
        """The exported pt2/onnx files as MLflow models (registered when export.register_as says)."""
        from ptflow.runs.mlflow_models import MODEL_TAG, REGISTERED_TAG, log_exported_models

        present = self.client.get_run(self.run_id).data.tags
        with mlflow_quiet():   # MLflow prints "Successfully registered ..."; the summary says it once
            logged = log_exported_models(self.uri, self.run_id, manifest, present,
                                         description.model_stem(self.record))
        for model in logged:
            tags = {MODEL_TAG.format(fmt=model.format): model.uri}
            if model.registered:
                tags[REGISTERED_TAG] = model.registered
            self._log_tags(tags)   # MLflow's only: a relog into another store logs its own models
            shown = self.record.summary.setdefault("mlflow", {}).setdefault("models", {})
            shown[model.format] = {"uri": model.uri, "registered": model.registered}

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
