"""Pre-flight inside Hydra's own flow: check every job before the first one starts.

Hydra parses the command line, composes the config and expands the sweep (glob, range,
interval, choice, config-declared `hydra.sweeper.params`, search path, -cn/-cp/-cd)
as for any `@hydra.main` app. The `Preflight` callback then runs in the launching
process, before any job:

1. the job list comes from the configured sweeper itself, its launcher swapped for a
   recorder; a sweeper that chooses jobs as it goes (Optuna) gets one probe job per
   value of each search dimension instead — each trial's plan is checked again in its job;
2. each job is composed as the launcher will compose it (`load_sweep_config`), hydra
   node included, and its plan compiled; every problem of every job is reported at once;
3. `dry_run=true` prints the plans and stops;
4. the tracking store is checked and prepared, stale runs closed, the run dir claimed.

Hydra catches Exceptions raised by callbacks and goes on, so the outcomes that must stop
it (`Rejected`, `DryRun`) are BaseExceptions.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ptflow.app import launch, sweep
from ptflow.app.overrides import deleted_stages, job_config
from ptflow.app.settings import compile_plan
from ptflow.core.errors import ConfigError, Problem, did_you_mean, first_line
from ptflow.core.plan import Plan
from ptflow.decide import objective

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
PROGRESS_FROM_JOBS = 64   # show a progress bar when checking this many jobs or more


class Rejected(BaseException):
    """The config has problems; nothing ran."""

    def __init__(self, error: ConfigError):
        super().__init__(str(error))
        self.error = error


class DryRun(BaseException):
    """dry_run=true: the plans were printed; nothing runs."""


@dataclass(frozen=True)
class Job:
    overrides: tuple[str, ...]
    config: Mapping[str, Any]        # resolved, without the hydra node
    plan: Plan


class Preflight(Callback):
    """Registered by the `ptflow` command as hydra.callbacks.ptflow_preflight."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _guarded(_check_run, config)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _guarded(_check_multirun, config)


def _guarded(check: Any, config: Any) -> None:
    try:
        check(config)
    except (Rejected, DryRun):
        raise
    except ConfigError as error:
        raise Rejected(error) from None
    except Exception as error:   # a bug of ours must stop the launch, not be warned about by Hydra
        raise Rejected(ConfigError.single("pre-flight", type(error).__name__, "a check that completes",
                                          first_line(error))) from None


def plan_job(cfg: Any, overrides: tuple[str, ...]) -> Job:
    config, choices = job_config(cfg, " ".join(overrides) or "(defaults)")
    deleted = deleted_stages(overrides, config)
    try:
        plan = compile_plan(config, choices)
    except ConfigError as error:
        raise ConfigError(deleted + list(error.problems)) from None
    if deleted:
        raise ConfigError(deleted)
    return Job(overrides, config, plan)


def _check_run(config: Any) -> None:
    job = plan_job(copy.deepcopy(config), sweep.task_overrides(config))
    _finish(config, [job], "run", 1)


def _check_multirun(config: Any) -> None:
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict
    from tqdm.auto import tqdm

    loader = GlobalHydra.instance().config_loader()
    basic = OmegaConf.select(config, "hydra.sweeper._target_") == BASIC_SWEEPER
    listed = sweep.expand(config, loader) if basic else sweep.probes(config, loader)
    jobs: list[Job] = []
    failures: dict[str, tuple[Problem, list[str]]] = {}
    for number, overrides in enumerate(tqdm(listed, desc="checking jobs", unit="job", leave=False,
                                            disable=None if len(listed) >= PROGRESS_FROM_JOBS else True)):
        try:
            cfg = loader.load_sweep_config(config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id, cfg.hydra.job.num = f"{cfg.hydra.job.name}_{number}", number
            jobs.append(plan_job(cfg, overrides))
        except Exception as error:   # ConfigError, or Hydra refusing this job's overrides
            for problem in _job_problems(error, overrides):
                failures.setdefault(problem.render(), (problem, []))[1].append(" ".join(overrides))
    if not basic:   # the sweeper optimises the objective: every probe must produce it
        for job in jobs:
            settings = job.plan.settings
            for problem in objective.problems(settings.objective, settings.pipeline, True):
                failures.setdefault(problem.render(), (problem, []))[1].append(" ".join(job.overrides))
    if failures:
        several = len(listed) > 1
        raise Rejected(ConfigError(
            dataclasses.replace(p, hint=(p.hint + "; " if p.hint else "") + "in job(s): " + " | ".join(where[:3])
                                + (f" (+{len(where) - 3} more)" if len(where) > 3 else "")) if several else p
            for p, where in failures.values()))
    _finish(config, jobs, "multirun", len(listed) if basic else None)
    if basic:
        launch.LAUNCH.checked = frozenset(tuple(job.overrides) for job in jobs)
        sweep.skip_checked_batches()



def _job_problems(error: Exception, overrides: tuple[str, ...]) -> list[Problem]:
    from hydra.errors import MissingConfigException

    if isinstance(error, ConfigError):
        return list(error.problems)
    missing = getattr(error, "missing_cfg_file", None) or ""
    if isinstance(error, MissingConfigException) and "/" in missing and error.options:
        group, option = missing.rsplit("/", 1)
        return [Problem(group, option, f"an option of group '{group}': " + ", ".join(sorted(error.options)),
                        did_you_mean(option, error.options))]
    return [Problem("overrides", " ".join(overrides), "a job Hydra can compose", " ".join(str(error).split()))]


def _finish(config: Any, jobs: list[Job], mode: str, expected: int | None) -> None:
    from omegaconf import open_dict, read_write

    from ptflow.core.files import claim_dir
    from ptflow.runs.record import RESULT_FILE

    if any(job.plan.settings.dry_run for job in jobs):
        from ptflow.runs.tracking import describe_store

        for job in jobs:
            settings = job.plan.settings
            store = describe_store(settings.tracking, Path(settings.outputs_dir).resolve()) \
                if settings.tracking.enabled else "none"
            print(f"[{' '.join(job.overrides) or 'defaults'}]\n{job.plan.render()}\n  tracking: {store}")
        what = "job(s) checked" if expected is not None or mode == "run" else "probe job(s) of the search space checked"
        print(f"dry run: {len(jobs)} {what}, nothing run")
        raise DryRun()
    stores = prepare_stores(jobs)
    key = "hydra.run.dir" if mode == "run" else "hydra.sweep.dir"
    wanted = Path(str(_select(config, key)))
    try:
        claimed = claim_dir(wanted if wanted.name else wanted.resolve(), taken_if=(RESULT_FILE,))
    except OSError as error:
        raise ConfigError.single(key, str(wanted), "a directory ptflow can create",
                                 f"{type(error).__name__}: {error}") from None
    with read_write(config), open_dict(config):
        if mode == "run":
            config.hydra.run.dir = str(claimed)
        else:   # jobs are composed again from the overrides: the claimed dir must be among them
            config.hydra.sweep.dir = str(claimed)
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quoted(claimed)}")
    launch.LAUNCH.mode, launch.LAUNCH.dir, launch.LAUNCH.expected, launch.LAUNCH.stores = mode, claimed, expected, stores
    if mode == "multirun" and stores:   # before any job starts: every job nests under it
        from ptflow.runs.sweep_parent import open_parents, plugins_of

        launcher_sweeper = sweep.hydra_overrides(config, added=f"hydra.sweep.dir={_quoted(claimed)}")
        open_parents(claimed, stores, sweep.task_overrides(config), expected, plugins_of(config),
                     command=("ptflow", *launch.LAUNCH.argv), hydra_overrides=launcher_sweeper)


def _select(config: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key)


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def prepare_stores(jobs: list[Job]) -> list[tuple[str, str]]:
    """Check each MLflow store and create its schema and experiment, once, here, before any
    job; close runs of this host's vanished processes. Returns [(uri, experiment id)]."""
    from ptflow.runs.tracker import quiet_store_logs
    from ptflow.runs.tracking import prepare_or_problem, store_uri

    quiet_store_logs()   # a failing store: one line per problem, not MLflow's logged tracebacks
    stores: dict[tuple[str, str], str] = {}
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for job in jobs:
        settings = job.plan.settings
        if not settings.tracking.enabled:
            continue
        outputs_dir = Path(settings.outputs_dir).resolve()
        key = (store_uri(settings.tracking, outputs_dir), settings.tracking.experiment)
        if key in seen:
            continue
        seen.add(key)
        experiment_id, found = prepare_or_problem(settings.tracking, outputs_dir)
        problems += found
        if experiment_id is not None:
            stores[key] = experiment_id
    if problems:
        raise ConfigError(problems)
    for (uri, _), experiment_id in stores.items():
        _close_stale(uri, experiment_id)
    return [(uri, experiment_id) for (uri, _), experiment_id in stores.items()]


def _close_stale(uri: str, experiment_id: str) -> None:
    """Housekeeping: a failure here is reported and never stops the launch."""
    from mlflow.tracking import MlflowClient

    from ptflow.runs.stale import Freed, close_stale_runs

    freed = Freed()
    try:
        closed = close_stale_runs(MlflowClient(tracking_uri=uri), [experiment_id], freed)
    except Exception as error:
        print(f"ptflow: could not close earlier runs of vanished processes in {uri}: "
              f"{type(error).__name__}: {first_line(error)}", file=sys.stderr)
        return
    if closed:
        print(f"ptflow: closed {len(closed)} earlier run(s) whose process on this host is gone "
              f"(KILLED with tag ptflow.kill_reason, or as their record says they ended): {', '.join(closed)}"
              + (f"; {freed}" if freed.files else ""), file=sys.stderr)
