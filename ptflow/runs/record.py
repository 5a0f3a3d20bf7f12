"""The run's own record in its run dir: the truth that MLflow mirrors.

``ptflow_result.json`` is written when the run starts (status RUNNING, with the process
that runs it), after every stage (the metrics so far) and when it ends (FINISHED, FAILED
or KILLED, the exit code and the reason). It holds everything needed to log the run to
MLflow again (``ptflow-runs relog``), so a tracking outage never costs a result, and a
run whose process vanished is still recognisable (``ptflow.runs.stale``).

A full disk must not leave the record saying RUNNING: when the run starts, a small file
beside it is allocated (``.ptflow_result.reserve``). If saving the record fails, the run's
state — how it ended, in which stage, its MLflow run — is written over that file's own
blocks, which needs no free space. ``RunRecord.load`` merges it into a record still saying
RUNNING, so ``ptflow-runs close-stale``, the next launch and ``relog`` complete the record
with the true end; the reserve is removed once the real record is saved.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ptflow.core.files import describe_no_space, no_space, write_atomic
from ptflow.core.typed import to_plain

if TYPE_CHECKING:
    from ptflow.core.artifact import Artifact, StageRecord
    from ptflow.core.plan import PlannedStage

RESULT_FILE = "ptflow_result.json"
EXIT_TRACKING_INCOMPLETE = 3   # the run finished, but its MLflow copy is incomplete (re-log it)
EXIT_NOTHING_MEASURED = 4      # a search ended with no completed trial: every trial's timings were invalid
_UNSAVED: set[str] = set()     # run dirs whose record could not be written (reported once)
RESERVE_FILE = ".ptflow_result.reserve"
RESERVE_BYTES = 256 * 1024     # allocated when the run starts; the end state is a few KB
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED", "CONFIG_ERROR")
END_STATE = ("status", "exit_code", "error", "reason", "stage", "ended_at", "tracking")
END_EXTRAS = ("metrics", "files", "warnings", "tags", "objective", "summary", "series", "datasets")   # when they fit
_KEPT: set[str] = set()        # run dirs whose reserve holds a state this process wrote


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Tracking:
    """Where the MLflow mirror of this run lives, and whether it is complete."""

    uri: str | None = None
    experiment: str | None = None
    run_id: str | None = None
    complete: bool = False
    error: str | None = None       # why the mirror is incomplete (the first tracking failure)
    experiment_id: str | None = None


@dataclass
class RunRecord:
    run_dir: str
    overrides: list[str] = field(default_factory=list)
    launch: list[str] = field(default_factory=list)   # what chose the config besides the overrides:
                                                      # -cp/-cn/-cd, hydra.searchpath (app.job.launch_args)
    status: str = "RUNNING"
    exit_code: int | None = None
    error: str | None = None            # what went wrong (FAILED, CONFIG_ERROR)
    reason: str | None = None           # why it was stopped (KILLED)
    stage: str | None = None            # the stage running now (or when the run ended)
    process: str = ""                   # lifecycle.ProcessId of the process that ran it
    started_at: str = field(default_factory=now)
    ended_at: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)   # {group: option} that shaped the run (params too)
    config: dict[str, Any] = field(default_factory=dict)     # resolved, without the hydra node
    settings: dict[str, Any] = field(default_factory=dict)   # device settings in force
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)   # per-step metrics (QAT loss)
    files: dict[str, str] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)   # artifact.DatasetInfo, as plain data
    warnings: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    objective: float | None = None      # what the job returned to its sweeper (None: no candidate)
    tracking: Tracking = field(default_factory=Tracking)
    # set by load() when the record said RUNNING and its reserve held the state saved in its
    # place (not a field: never written): the record is to be saved to complete it
    recovered: ClassVar[bool] = False

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / RESULT_FILE

    @property
    def reserve_path(self) -> Path:
        return Path(self.run_dir) / RESERVE_FILE

    def end(self, status: str, exit_code: int, error: str | None = None, reason: str | None = None) -> None:
        self.status, self.exit_code, self.error, self.reason = status, exit_code, error, reason
        self.ended_at = now()

    def reserve(self) -> None:
        """Allocate the reserve that keeps the run's state if the record cannot be saved (raises
        OSError on a disk already too full). Its blocks are written once here, so writing over
        them later needs no free space."""
        handle = os.open(self.reserve_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            try:   # blocks that stay allocated; the spaces below make them written ones
                getattr(os, "posix_fallocate", lambda *_: None)(handle, 0, RESERVE_BYTES)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # a file system without it
                    raise
            os.pwrite(handle, b" " * RESERVE_BYTES, 0)
        except OSError as error:
            os.close(handle)
            self.reserve_path.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(self.reserve_path)) from error
        os.close(handle)

    def save(self) -> bool:
        """Write the record atomically; on failure (disk full...) keep its state in the reserve,
        say so once and return False."""
        try:
            self.write()
            return True
        except OSError as error:
            kept = self._keep_in_reserve()
            if self.run_dir not in _UNSAVED:   # once per run, not once per stage
                _UNSAVED.add(self.run_dir)
                full = no_space(error)
                why = describe_no_space(full, self.path) if full is not None else str(error)
                where = f"; its state is kept in {self.reserve_path}" if kept else ""
                print(f"ptflow: could not write the run record {self.path}: {why}{where}", file=sys.stderr)
            return False

    def write(self) -> None:
        """Write the record atomically (raises OSError). Once the record is complete, its reserve
        goes; while it runs, a state kept there earlier is wiped (the record is newer)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(asdict(self), indent=2, default=str) + "\n")
        if self.status != "RUNNING":
            self.reserve_path.unlink(missing_ok=True)
            _KEPT.discard(self.run_dir)
            self.recovered = False
        elif self.run_dir in _KEPT and _write_reserve(self.reserve_path, b""):
            _KEPT.discard(self.run_dir)

    def kept_in_reserve(self) -> bool:
        """Whether the reserve holds this record's state because the record could not be saved."""
        return self.run_dir in _KEPT

    def _keep_in_reserve(self) -> bool:
        """The end state (with metrics and files when they fit), written over the reserve."""
        state = asdict(self)
        for extras in (END_EXTRAS, ()):
            data = json.dumps({k: state[k] for k in (*END_STATE, *extras)}, default=str,
                              separators=(",", ":")).encode()
            if len(data) <= RESERVE_BYTES and _write_reserve(self.reserve_path, data):
                _KEPT.add(self.run_dir)
                return True
        return False

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        """The record in `run_dir`, completed from its reserve when it says RUNNING and the
        reserve holds a later state. Raises OSError (unreadable) or ValueError (not JSON, not a
        record: wrong types), naming the file."""
        path = Path(run_dir) / RESULT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
        data = _checked(data, path)
        if "run_dir" not in data:
            raise ValueError(f"{path} is not a run record: it has no 'run_dir'")
        record = cls(**data)
        kept = read_reserve(Path(run_dir))
        if kept and record.status == "RUNNING":
            record._merge(kept)
            record.recovered = True
        return record

    def _merge(self, kept: dict[str, Any]) -> None:
        for key, value in kept.items():
            if key == "tracking":
                self.tracking = value
            elif isinstance(value, dict) and key != "summary":
                getattr(self, key).update(value)
            else:
                setattr(self, key, value)

    # -- engine hooks: the record follows the run stage by stage -------------------------
    def before_stage(self, planned: "PlannedStage", artifact: "Artifact | None") -> None:
        self.stage = planned.name
        self.save()

    def after_stage(self, record: "StageRecord", artifact: "Artifact") -> None:
        self.stage = None
        self.metrics.update({k: float(v) for k, v in artifact.metrics.items() if v is not None})
        self.files.update({k: str(v) for k, v in artifact.files.items()})
        self.tags.update(artifact.tags)
        self.series.update({k: [float(v) for v in values] for k, values in artifact.series.items()})
        for dataset in map(to_plain, artifact.datasets):
            if dataset not in self.datasets:
                self.datasets.append(dataset)
        self.save()


def read_reserve(run_dir: Path) -> dict[str, Any] | None:
    """The state kept in `run_dir`'s reserve, or None (no reserve, blank, or unreadable)."""
    try:
        text = (Path(run_dir) / RESERVE_FILE).read_bytes().rstrip(b"\0 \n")
        return _checked(json.loads(text), Path(run_dir) / RESERVE_FILE) if text else None
    except (OSError, ValueError):
        return None


def _write_reserve(path: Path, data: bytes) -> bool:
    """`data` over the reserve's allocated blocks, padded with spaces: no O_TRUNC, no growth."""
    try:
        handle = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.pwrite(handle, data.ljust(RESERVE_BYTES), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(handle)


_TYPES = {"str": (str,), "str | None": (str, type(None)), "int | None": (int, type(None)),
          "float | None": (int, float, type(None)), "Tracking": (dict,)}


def _checked(data: Any, path: Path) -> dict[str, Any]:
    """The record fields of `data`, each of the type the record declares (tracking as Tracking);
    ValueError naming the file and the first field that is not."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a run record (an object)")
    known = {f.name: str(f.type) for f in fields(RunRecord)}
    data = {k: v for k, v in data.items() if k in known}
    for key, value in data.items():
        kind = known[key]
        wanted = ((dict,) if kind.startswith("dict") else (list,) if kind.startswith("list")
                  else _TYPES.get(kind, (object,)))
        if not isinstance(value, wanted) or isinstance(value, bool) and bool not in wanted:
            raise ValueError(f"{path}: '{key}' is {type(value).__name__} {str(value)[:40]!r}, expected {kind}")
    if "status" in data and data["status"] not in STATUSES:
        raise ValueError(f"{path}: 'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}")
    if "tracking" in data:
        names = {f.name for f in fields(Tracking)}
        data["tracking"] = Tracking(**{k: v for k, v in data["tracking"].items() if k in names})
    return data


def run_records(paths) -> list[RunRecord]:
    """The records at `paths` (result files) that can be read; a damaged one is skipped."""
    records = []
    for path in sorted(paths):
        try:
            records.append(RunRecord.load(Path(path).parent))
        except (OSError, ValueError, TypeError):
            continue
    return records
