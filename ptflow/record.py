"""The run's own record in its run dir: the truth that MLflow mirrors.

``ptflow_result.json`` is written when the run starts (status RUNNING, with the process
that runs it), after every stage (the metrics so far) and when it ends (FINISHED, FAILED
or KILLED, the exit code and the reason). It holds everything needed to log the run to
MLflow again (``ptflow-runs relog``), so a tracking outage never costs a result, and a
run whose process vanished is still recognisable (``ptflow.stale``).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.files import write_atomic
from ptflow.typed import to_plain

if TYPE_CHECKING:
    from ptflow.artifact import Artifact, StageRecord
    from ptflow.plan import PlannedStage

RESULT_FILE = "ptflow_result.json"
EXIT_TRACKING_INCOMPLETE = 3   # the run finished, but its MLflow copy is incomplete (re-log it)
_UNSAVED: set[str] = set()     # run dirs whose record could not be written (reported once)


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


@dataclass
class RunRecord:
    run_dir: str
    overrides: list[str] = field(default_factory=list)
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

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / RESULT_FILE

    def end(self, status: str, exit_code: int, error: str | None = None, reason: str | None = None) -> None:
        self.status, self.exit_code, self.error, self.reason = status, exit_code, error, reason
        self.ended_at = now()

    def save(self) -> bool:
        """Write the record atomically; on failure (disk full...) say so once and return False."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(asdict(self), indent=2, default=str) + "\n")
            return True
        except OSError as error:
            if self.run_dir not in _UNSAVED:   # once per run, not once per stage
                _UNSAVED.add(self.run_dir)
                print(f"ptflow: could not write the run record {self.path}: {error}", file=sys.stderr)
            return False

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        data = json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["tracking"] = Tracking(**data.get("tracking") or {})
        return cls(**data)

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


def run_records(paths) -> list[RunRecord]:
    """The records at `paths` (result files) that can be read; a damaged one is skipped."""
    records = []
    for path in sorted(paths):
        try:
            records.append(RunRecord.load(Path(path).parent))
        except (OSError, ValueError, TypeError):
            continue
    return records
