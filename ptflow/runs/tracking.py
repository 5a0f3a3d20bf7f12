"""The MLflow store: its config, a pre-flight check that answers in seconds, and the
once-per-store set-up (schema + experiment) under a cross-process lock.

mlflow is imported lazily: it costs ~1.4 s and the CLI must stay quick to reject a bad
config. The per-run subscriber is ``ptflow.runs.tracker.MlflowTracker``.
"""
from __future__ import annotations

import enum
import hashlib
import logging
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ptflow.core.errors import ConfigError, Problem, first_line
from ptflow.core.files import creatable_dir_problem

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0     # per try, for an http(s) store's /health
PROBE_TRIES = 2
LOCK_TIMEOUT_S = 120.0


class TrackingBackend(str, enum.Enum):
    MLFLOW = "mlflow"
    NONE = "none"


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how runs are mirrored into MLflow.

    conf/tracking/mlflow.yaml fills ``uri`` and ``experiment`` from MLflow's own
    MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME when they are set: a value given on the
    command line or in a config wins over the variable, the variable over the default.
    """

    backend: TrackingBackend = TrackingBackend.MLFLOW
    uri: str | None = None            # null: sqlite:///<absolute outputs_dir>/mlflow.db
    experiment: str = "ptflow"
    run_name: str | None = None       # null: derived from what ran (ptflow.runs.naming), unique per run
    name_groups: tuple[str, ...] = ("model", "quantize", "compile")   # named when their stage runs
    log_exports: bool = True          # copy exported model files into the run's artifacts
    log_models: bool = True           # log the exported pt2 (and onnx) as MLflow models (signature, example)
    http_timeout_s: int = 30          # per MLflow request to an http(s) server
    http_retries: int = 2             # retries per request (backoff 1 s, 2 s, ...)
    system_metrics: bool = False      # sample CPU/memory/disk/network (+GPU) while the run goes; needs psutil
    system_metrics_interval_s: float = 1.0   # seconds between samples (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins)

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ConfigError.single("experiment", self.experiment, "a non-empty experiment name",
                                     _empty_variable_hint("MLFLOW_EXPERIMENT_NAME"))
        if self.uri is not None and not self.uri.strip():
            raise ConfigError.single("uri", self.uri, "an MLflow tracking URI, or null for the sqlite default",
                                     _empty_variable_hint("MLFLOW_TRACKING_URI"))
        if self.http_timeout_s < 1:
            raise ConfigError.single("http_timeout_s", self.http_timeout_s, "seconds >= 1")
        if self.http_retries < 0:
            raise ConfigError.single("http_retries", self.http_retries, "an integer >= 0")
        if not self.system_metrics_interval_s > 0:
            raise ConfigError.single("system_metrics_interval_s", self.system_metrics_interval_s, "seconds > 0")

    @property
    def enabled(self) -> bool:
        return self.backend is TrackingBackend.MLFLOW


def _empty_variable_hint(name: str) -> str:
    return f"{name} is set but empty: unset it or give it a value" if os.environ.get(name) == "" else ""


def store_uri(config: TrackingConfig, outputs_dir: Path) -> str:
    return config.uri or f"sqlite:///{(outputs_dir / 'mlflow.db').resolve()}"


def describe_store(config: TrackingConfig, outputs_dir: Path) -> str:
    """Where runs go, and which setting chose it — for dry runs and error messages."""
    uri = store_uri(config, outputs_dir)
    origin = ("MLFLOW_TRACKING_URI" if config.uri and config.uri == os.environ.get("MLFLOW_TRACKING_URI")
              else "tracking.uri" if config.uri else "outputs_dir")
    named = " (from MLFLOW_EXPERIMENT_NAME)" if config.experiment == os.environ.get("MLFLOW_EXPERIMENT_NAME") else ""
    return f"{uri} (from {origin}), experiment '{config.experiment}'{named}"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (sqlite:////abs/path or sqlite:///relative)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


_SET_BY_PTFLOW: set[str] = set()


def configure_http(config: TrackingConfig) -> None:
    """Bound MLflow's HTTP retries (its defaults wait ~4 minutes on a dead server).

    MLflow's own MLFLOW_HTTP_REQUEST_* variables win when the user has set them; the
    ones ptflow set follow each run's config."""
    wanted = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(config.http_timeout_s),
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(config.http_retries),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2"}
    for name, value in wanted.items():
        if name not in os.environ or name in _SET_BY_PTFLOW:
            os.environ[name] = value
            _SET_BY_PTFLOW.add(name)


def check_store(config: TrackingConfig, outputs_dir: Path) -> list[Problem]:
    """Can this run's record be written? Decides in seconds, touches nothing."""
    uri = store_uri(config, outputs_dir)
    key = "tracking.uri" if config.uri else "outputs_dir"
    db = sqlite_path(uri)
    if db is not None:
        db = db.resolve()
        reason = creatable_dir_problem(db.parent)
        if reason is None and db.exists() and not os.access(db, os.R_OK | os.W_OK):
            reason = f"{db} is read-only for this user"
        if reason:
            return [Problem(key, str(config.uri or outputs_dir), "a place where ptflow can write the MLflow "
                            "database (mlflow.db and its journal)",
                            f"{reason}; pick a writable outputs_dir, or tracking=none")]
    elif _is_http(uri):
        cause = probe(uri)
        if cause:
            origin = " (set by MLFLOW_TRACKING_URI)" if uri == os.environ.get("MLFLOW_TRACKING_URI") else ""
            return [Problem("tracking.uri", uri, "a reachable MLflow tracking server",
                            f"{cause}{origin}; start the server (mlflow server --host ... --port ...), fix "
                            "the URI, or run with tracking=none")]
    return []


def probe(uri: str) -> str | None:
    """None if an http(s) server answers at `uri`, else why not (bounded: ~PROBE_TIMEOUT_S x tries)."""
    url = uri.rstrip("/") + "/health"
    cause = ""
    for _ in range(PROBE_TRIES):
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
                return None
        except urllib.error.HTTPError:
            return None        # something answered; MLflow itself will judge the rest
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ssl.SSLError):
                return None    # a server answered; its certificate is MLflow's to judge (MLFLOW_TRACKING_*TLS*)
            cause = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    host = urlparse(uri).netloc
    return f"no answer from {host} after {PROBE_TRIES} tries of {PROBE_TIMEOUT_S:.0f} s ({cause})"


class StoreUnavailable(Exception):
    """A store to read runs from is not there: no sqlite file, or a server that does not answer."""


def existing_store(uri: str, origin: str) -> str:
    """`uri` as a store to read (a sqlite path made absolute), with MLflow's HTTP retries
    bounded. A missing sqlite file is never created (MLflow makes an empty one on first
    contact); a dead server is found in seconds. `origin` says which setting chose `uri`."""
    db = sqlite_path(uri)
    if db is not None:
        db = db.resolve()
        uri = f"sqlite:///{db}"
        if not db.is_file():
            raise StoreUnavailable(f"no MLflow store at {db} (chosen by {origin})")
    elif _is_http(uri) and (cause := probe(uri)):
        raise StoreUnavailable(f"the MLflow server {uri} (chosen by {origin}) does not answer: {cause}")
    configure_http(TrackingConfig(uri=uri))
    return uri


def _lock_path(uri: str) -> Path:
    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    folder = Path(tempfile.gettempdir()) / "ptflow-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (hashlib.sha256(uri.encode()).hexdigest()[:16] + ".lock")


def prepare(config: TrackingConfig, outputs_dir: Path) -> str:
    """Create the store's schema and the experiment if needed; return the experiment id.

    Any number of processes may call this at once (parallel single runs, joblib jobs): a
    file lock next to the sqlite file serialises the schema migration and the experiment
    creation, and an experiment created meanwhile elsewhere (another machine) is reused.
    """
    from filelock import FileLock

    configure_http(config)
    uri = store_uri(config, outputs_dir)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_lock_path(uri)), timeout=LOCK_TIMEOUT_S):
        client = _client(uri)
        try:
            return _experiment_id(client, config.experiment, outputs_dir, uri)
        except Exception as error:
            raise ExperimentError(f"{type(error).__name__}: {first_line(error)}") from error


# MLflow 3's experiment kind: a classic ML experiment opens on its runs table, not the GenAI overview
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class ExperimentError(Exception):
    """The store opened, but the experiment could not be found or created there."""


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    db_log = logging.getLogger("mlflow.store.db.utils")   # "Creating initial MLflow database tables..."
    level = db_log.level
    db_log.setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)   # opens (and on first use migrates) the store
        return client
    finally:
        db_log.setLevel(level)


def _experiment_id(client, name: str, outputs_dir: Path, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (outputs_dir / "mlartifacts").resolve().as_uri() if uri.startswith(("sqlite:", "file:")) else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            experiment = client.get_experiment_by_name(name)   # created meanwhile by another machine
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:   # made before ptflow set it; a kind someone chose stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def prepare_or_problem(config: TrackingConfig, outputs_dir: Path) -> tuple[str | None, list[Problem]]:
    """``prepare`` for the launcher: (experiment id, []) or (None, problems naming the key)."""
    problems = check_store(config, outputs_dir)
    if problems:
        return None, problems
    uri = store_uri(config, outputs_dir)
    try:
        return prepare(config, outputs_dir), []
    except ExperimentError as error:
        return None, [Problem("tracking.experiment", config.experiment, "an experiment this MLflow "
                              "store can find or create", str(error))]
    except Exception as error:   # MLflow, SQLAlchemy and OS errors alike: one line, the key, the cause
        key = "tracking.uri" if config.uri else "outputs_dir"
        return None, [Problem(key, uri, "an MLflow store ptflow can open and write",
                              f"{type(error).__name__}: {first_line(error)}")]
