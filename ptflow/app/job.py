"""One pipeline run inside a Hydra job: plan, device, record, tracking, engine, summary.

The run's record (``ptflow_result.json``, see ``ptflow.runs.record``) is written when it
starts, after every stage and when it ends, whatever the end: FINISHED, FAILED with the
error, KILLED with the signal. MLflow mirrors it; when the mirror fails, the run goes on
and exits 3 so nobody mistakes an incomplete MLflow record for a complete one.

A run that could not record itself must not run: it needs ``files.MIN_FREE_MB`` free where
its record and its MLflow store are written, or it fails at once. Should the disk fill up
later, the record's state goes into its reserve (``ptflow.runs.record``) and the console says so.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ptflow.app import launch
from ptflow.app.args import CONFIG_DIR
from ptflow.app.console import library_noise_to_log_file
from ptflow.app.settings import RunSettings, compile_plan
from ptflow.core import engine, lifecycle
from ptflow.core.errors import ConfigError, PtflowError, first_line
from ptflow.core.files import claim_dir, describe_disk_full, room_problem, write_atomic
from ptflow.core.stage import Rebuild, RunContext
from ptflow.core.stage_cache import StageCache
from ptflow.core.targets import resolve_path
from ptflow.decide import objective
from ptflow.measure import device
from ptflow.runs import naming, summary
from ptflow.runs.naming import JobInfo
from ptflow.runs.record import EXIT_TRACKING_INCOMPLETE, RESERVE_FILE, RESULT_FILE, RunRecord
from ptflow.runs.tracker import MlflowTracker, quiet_store_logs, relog_command
from ptflow.runs.tracking import sqlite_path, store_uri

log = logging.getLogger(__name__)
OUTCOMES: list[RunRecord] = []   # in-process launchers: the CLI reads these for its exit code

__all__ = ["EXIT_TRACKING_INCOMPLETE", "OUTCOMES", "RESULT_FILE", "hydra_task", "run"]


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def run(config: dict[str, Any], config_yaml: str, choices: dict[str, str], overrides: list[str],
        run_dir: Path, job: JobInfo | None = None) -> RunRecord:
    """Run one pipeline and record how it ended. User errors never raise (the record says
    what happened); a stop signal is recorded KILLED and then raised again."""
    started = time.perf_counter()
    record = RunRecord(str(run_dir), list(overrides), launch=list(job.launch) if job else [],
                       process=str(lifecycle.current_process()), config=config)
    tracker: MlflowTracker | None = None
    interrupted: lifecycle.Interrupted | None = None

    def warn(key: str, message: str) -> None:
        record.warnings[key] = message
        print(f"ptflow: warning: {message}", file=sys.stderr, flush=True)
        if tracker is not None:
            tracker.warn(key, message)

    try:
        plan = compile_plan(config, choices)
        settings = plan.settings
        job = job or JobInfo()
        record.run_name = naming.run_name(plan, job)
        record.tags = {**naming.run_tags(plan, job, record), **settings.tags}   # the plan refused clashes
        record.choices = naming.choices(plan)
        if settings.reproduces:
            record.tags["ptflow.reproduces"] = settings.reproduces
        problem = room_problem(_record_places(run_dir, settings))
        if problem:
            raise PtflowError(problem)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", config_yaml)
        write_atomic(run_dir / "plan.txt", plan.render() + "\n")
        determinism, warnings = device.apply_determinism(settings.deterministic, settings.device)
        for key, message in warnings + device.apply(settings.device):
            warn(key, message)
        seeded = device.seed_everything(settings.seed)   # before the model is built (random init)
        record.settings = {**device.capture(settings.device), **determinism,
                           "seed": settings.seed, "seeded": ",".join(seeded)}
        cache = StageCache(resolve_path(settings.outputs_dir) / "cache" / "stages") if settings.cache else None
        ctx = RunContext(run_dir, settings.device.name, settings.seed, config_hash(config),
                         record.settings, engine.progress, warn, cache, rebuild(config, choices))
        record.reserve()
        try:
            record.write()   # a run that cannot be recorded stops here
        except OSError:
            record.reserve_path.unlink(missing_ok=True)   # no record for it to complete
            raise
        if settings.tracking.enabled:
            # relative to where the user ran ptflow, also when hydra.job.chdir=true moved the job
            tracker = MlflowTracker(settings.tracking, resolve_path(settings.outputs_dir), record)
        artifact = engine.run(plan, ctx, [record, tracker] if tracker else [record])
        record.objective, why_not = objective.value(artifact.metrics, settings.objective, artifact.tags)
        if why_not:
            warn("objective", why_not)
        record.summary = summary.build(artifact, choices, run_dir, time.perf_counter() - started, record)
        write_atomic(run_dir / "summary.json", json.dumps(record.summary, indent=2, default=str) + "\n")
        record.end("FINISHED", 0)
    except KeyboardInterrupt as error:   # SIGINT / SIGTERM (lifecycle.Interrupted)
        interrupted = lifecycle.as_interrupted(error)
        where = (f"during stage '{record.stage}'" if record.stage
                 else "between stages" if record.metrics else "before the first stage")
        record.end("KILLED", interrupted.exit_code, reason=f"{interrupted.signal_name} received {where}")
    except ConfigError as error:
        record.end("CONFIG_ERROR", error.exit_code, error=str(error))
        print(f"ptflow: {error}", file=sys.stderr)
    except Exception as error:  # a stage failure, a full disk, or a bug: record it and say where
        record.end("FAILED", 1, error=_failure_text(error, run_dir))
        _write_error_file(run_dir, record.error, error)
    finally:
        with lifecycle.protected():   # a first signal now waits for the record; a second exits
            if record.status == "RUNNING":   # SystemExit or another BaseException: still say so
                record.end("FAILED", 1, error="the run ended before ptflow could record its result")
            if tracker is not None:
                tracker.end()
            if record.status == "FINISHED" and tracker is not None and not record.tracking.complete:
                record.exit_code = EXIT_TRACKING_INCOMPLETE
            saved = record.save()
            if not saved and record.status == "FINISHED" and record.exit_code == 0:
                record.exit_code = EXIT_TRACKING_INCOMPLETE   # finished, but its own record is not complete
                record.save()
            OUTCOMES.append(record)
            _report(record, tracker is not None, saved)
    if interrupted is not None:
        raise interrupted
    return record


def rebuild(config: dict[str, Any], choices: dict[str, str]) -> Rebuild:
    """How a stage has this run rebuilt in a fresh process (``ptflow.app.repeat_worker``):
    the same resolved config, run from where the user ran ptflow (relative paths, the cache)."""
    return Rebuild((sys.executable, "-m", "ptflow.app.repeat_worker"), {"config": config, "choices": choices},
                   str(resolve_path(".")))


def _record_places(run_dir: Path, settings: RunSettings) -> list[Path]:
    """Where the run records itself: its run dir, outputs_dir and the sqlite store's folder."""
    outputs_dir = resolve_path(settings.outputs_dir)
    db = sqlite_path(store_uri(settings.tracking, outputs_dir)) if settings.tracking.enabled else None
    return [outputs_dir, run_dir] + ([db.resolve().parent] if db is not None else [])


def _failure_text(error: Exception, run_dir: Path) -> str:
    full = describe_disk_full(error, run_dir)
    if full is not None:
        return (f"stage '{error.stage}' failed: " if hasattr(error, "stage") else "") + full
    if isinstance(error, PtflowError):
        return str(error)
    return f"unexpected error: {type(error).__name__}: {first_line(error)}"


def _write_error_file(run_dir: Path, text: str, error: Exception) -> None:
    detail = "".join(traceback.format_exception(error))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "error.txt", f"{text}\n\n{detail}")
    except OSError:
        pass   # a full disk: the message on the console and in the record is what remains


def _report(record: RunRecord, tracked: bool, saved: bool) -> None:
    """What the console says at the end of a run (KILLED runs: the CLI says one line)."""
    run_dir = summary.relative(record.run_dir)
    tracking = record.tracking
    incomplete = tracked and not tracking.complete
    if record.status == "FINISHED":
        print(summary.render(record.summary, mlflow_complete=not incomplete), flush=True)
    elif record.status == "FAILED":
        lines = [f"ptflow: {record.error}"]
        if tracking.run_id and not incomplete:
            lines.append(f"MLflow run {tracking.run_id} ended FAILED (tag ptflow.error, artifact error.txt)")
        detail = ", and the full traceback (error.txt)," if (Path(record.run_dir) / "error.txt").is_file() else ""
        lines.append(f"outputs so far{detail} are in {run_dir}")
        print("\n".join(lines), file=sys.stderr, flush=True)
    if incomplete and record.status in ("FINISHED", "FAILED"):
        own = f"the run's own record is complete in {run_dir}" if saved else "nor is the run's own record (below)"
        print(f"ptflow: the MLflow record of this run is incomplete ({tracking.error}); {own}. "
              f"Re-log it: {relog_command(run_dir)}", file=sys.stderr, flush=True)
    if not saved:
        print(_unsaved_text(record, run_dir), file=sys.stderr, flush=True)


def _unsaved_text(record: RunRecord, run_dir: str) -> str:
    """The record still says RUNNING: where its true end is, and what completes the record."""
    stage = f" in stage '{record.stage}'" if record.stage and record.status != "FINISHED" else ""
    end = f"{record.status}{stage}, exit code {record.exit_code}"
    record_file = f"{run_dir}/{RESULT_FILE}"
    if not record.path.is_file():
        return f"ptflow: no run record could be written ({record_file}); the run ended {end}"
    if not record.kept_in_reserve():
        return (f"ptflow: the run record {record_file} could not be completed and the run's end ({end}) could "
                "not be kept either: it says RUNNING, and ptflow-runs close-stale will close it as KILLED")
    outputs = record.config.get("outputs_dir") or "outputs"
    return (f"ptflow: the run record {record_file} is NOT complete: it still says RUNNING, for lack of space. "
            f"The run's end ({end}) is kept in {run_dir}/{RESERVE_FILE}; once there is space, "
            f"ptflow-runs close-stale --outputs-dir {outputs} completes the record from it")


def hydra_task(cfg: Any) -> float | None:
    """The function Hydra calls for each job (in this process, or in a launcher's worker);
    returns the run's objective for a sweeper (None when the run does not count)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    lifecycle.install()            # a joblib worker gets its own handlers
    logging.raiseExceptions = False   # a full disk must not spray logging tracebacks
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)   # MLflow's retries: we report once
    quiet_store_logs()
    hydra_cfg = HydraConfig.get()
    _console_verbosity(hydra_cfg.verbose)
    library_noise_to_log_file()
    if launch.LAUNCH.rerun:   # Hydra would run it in the original's dir, over its record
        _rerun_in_own_dir(hydra_cfg)
    job = dataclasses.replace(JobInfo.from_hydra(hydra_cfg), launch=launch_args(hydra_cfg))
    config = OmegaConf.to_container(cfg, resolve=True)
    log.debug("job config composed; run dir %s", hydra_cfg.runtime.output_dir)
    return run(config=config,
               config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
               choices={k: str(v) for k, v in hydra_cfg.runtime.choices.items() if v is not None},
               overrides=list(job.overrides),
               run_dir=Path(hydra_cfg.runtime.output_dir),
               job=job).objective


def _rerun_in_own_dir(hydra_cfg: Any) -> None:
    """Point the rerun of a pickled job (``--experimental-rerun``) at a run dir of its own: under
    ptflow's layout (``<outputs>/runs/<date>/<time>``) today's date and the time now; elsewhere the
    original's name with a number (``<dir>-1``). The original run and its record stay as they were."""
    import re

    from omegaconf import read_write

    original = Path(hydra_cfg.runtime.output_dir)
    wanted = original
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", original.parent.name) and re.fullmatch(r"\d{2}-\d{2}-\d{2}", original.name):
        now = time.localtime()
        wanted = original.parent.parent / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)
    own = claim_dir(wanted, taken_if=(RESULT_FILE,))
    with read_write(hydra_cfg):
        hydra_cfg.runtime.output_dir = str(own.resolve())
        hydra_cfg.run.dir = str(own)
    log.info("rerun of %s in %s", original, own)


def launch_args(hydra_cfg: Any) -> tuple[str, ...]:
    """The command-line arguments besides the job's overrides that chose its config, absolute, so
    that `ptflow <these> <overrides>` composes the same config from any directory: -cp/-cn when
    the primary config is not ptflow's own, -cd for each extra config dir, hydra.searchpath."""
    from omegaconf import OmegaConf

    args: list[str] = []
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main" and Path(source.path).resolve() != Path(CONFIG_DIR).resolve():
            args += ["-cp", str(Path(source.path).resolve())]
        elif source.provider == "command-line":
            args += ["-cd", str(Path(source.path).resolve())]
    if hydra_cfg.job.config_name != "config":
        args += ["-cn", str(hydra_cfg.job.config_name)]
    hydra_overrides = OmegaConf.to_container(hydra_cfg.overrides.hydra, resolve=False)
    return (*args, *(o for o in hydra_overrides if o.lstrip("+~").startswith("hydra.searchpath")))


def _console_verbosity(verbose: Any) -> None:
    """hydra.verbose=true (or naming ptflow) shows ptflow's debug log on the console too:
    ptflow's console handler is set to WARNING, so raising logger levels alone shows nothing."""
    names = [verbose] if isinstance(verbose, str) else list(verbose) if not isinstance(verbose, bool) else []
    if verbose is True or any(n == "ptflow" or n.startswith("ptflow.") for n in names):
        logging.getLogger("ptflow").setLevel(logging.DEBUG)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.DEBUG)
