"""A sweep: the jobs its sweeper would run, the table of how they ended, and — after a
signal — closing what it left open."""
from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptflow.core.errors import ConfigError
from ptflow.core.lifecycle import Interrupted
from ptflow.runs.description import stability
from ptflow.runs.record import EXIT_NOTHING_MEASURED, EXIT_TRACKING_INCOMPLETE, RESULT_FILE, run_records


def task_overrides(cfg: Any) -> tuple[str, ...]:
    from omegaconf import OmegaConf

    return tuple(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))


def hydra_overrides(cfg: Any, added: str = "") -> tuple[str, ...]:
    """The launcher and sweeper overrides (hydra/launcher=joblib, hydra.sweeper.n_trials=3),
    without `added` (the sweep dir ptflow claimed and appended)."""
    from omegaconf import OmegaConf

    ours = ("hydra.mode=", "hydra.callbacks.ptflow_preflight", "++hydra.callbacks.ptflow_preflight")   # -m, ptflow's
    return tuple(o for o in OmegaConf.to_container(cfg.hydra.overrides.hydra, resolve=False)
                 if o != added and not o.startswith(ours))


def expand(config: Any, loader: Any) -> list[tuple[str, ...]]:
    """The jobs the configured sweeper would launch, asked of the sweeper itself."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.errors import HydraException
    from hydra.plugins.launcher import Launcher
    from hydra.types import HydraContext
    from omegaconf import OmegaConf, open_dict, read_write

    recorded: list[tuple[str, ...]] = []

    class Recorder(Launcher):
        def setup(self, **kwargs: Any) -> None:
            pass

        def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
            recorded.extend(tuple(o) for o in job_overrides)
            return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=0.0)
                    for o in job_overrides]

    OmegaConf.select(config, "hydra.sweep.dir")   # fix ${now:} in the real config first
    with tempfile.TemporaryDirectory(prefix="ptflow-dry-") as scratch:
        dry = copy.deepcopy(config)
        with read_write(dry), open_dict(dry):
            dry.hydra.sweep.dir = scratch              # the sweeper writes multirun.yaml there
        sweeper = Plugins.instance().instantiate_sweeper(
            config=dry, hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks()),
            task_function=lambda cfg: None)
        sweeper.launcher = Recorder()
        sweeper.validate_batch_is_legal = lambda batch: None   # every job is composed below, all failures listed
        try:
            sweeper.sweep(arguments=list(task_overrides(config)))
        except HydraException as error:   # e.g. interval(), which only sampling sweepers support
            raise ConfigError.single("overrides", " ".join(task_overrides(config)),
                                     "sweeps the configured sweeper supports", f"{error}; interval() needs a "
                                     "sweeper that samples (hydra/sweeper=optuna), the basic sweeper takes "
                                     "choice(), range() and glob()") from None
    return recorded


def probes(config: Any, loader: Any) -> list[tuple[str, ...]]:
    """For a sweeper that picks jobs as it goes: each value of each search dimension once
    (both ends of a range or interval), the other dimensions at their first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    node = OmegaConf.select(config, "hydra.sweeper.params")
    params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(task_overrides(config))
    dims: dict[str, list[str]] = {}
    for override in OverridesParser.create(config_loader=loader).parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            dims[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_interval_sweep():
            value = override.value()
            dims[key] = [f"{key}={value.start}", f"{key}={value.end}"]
        else:
            values = list(override.sweep_string_iterator())
            if override.is_range_sweep():
                values = values[:1] + values[-1:]
            dims[key] = [f"{key}={v}" for v in values]
    jobs = [tuple(probes[0] for probes in dims.values() if probes)]
    for key, probes in dims.items():
        for probe in probes[1:]:
            jobs.append(tuple(probe if k == key else p[0] for k, p in dims.items() if p))
    return jobs


def report(sweep_dir: Path, expected: int | None) -> int:
    """Print each job's status, p50, speedup and metric delta; return the sweep's exit code.
    `expected` is None when the sweeper decided the number of jobs as it went (Optuna)."""
    results = sorted(run_records(sweep_dir.glob(f"*/{RESULT_FILE}")),
                     key=lambda r: int(Path(r.run_dir).name) if Path(r.run_dir).name.isdigit() else 0)
    expected = len(results) if expected is None else expected
    failed = [r for r in results if r.status != "FINISHED"]
    incomplete = [r for r in results if r.status == "FINISHED" and r.exit_code]
    shared = set.intersection(*(set(r.overrides) for r in results)) if len(results) > 1 else set()
    lines = [f"sweep: {len(results)}/{expected} job(s) in {sweep_dir}: "
             f"{len(results) - len(failed)} finished, {len(failed)} failed"
             + (f", {len(incomplete)} with an incomplete MLflow record" if incomplete else ""),
             f"  {'job':<42}{'status':<10}{'state':<10}{'p50 ms':>9}{'speedup':>9}{'metric Δ':>10}  run id"]
    for result in results:
        s = result.summary or {}
        p50 = s.get("latency_ms", {}).get("optimized", {}).get("p50")
        speedup, delta = s.get("speedup_p50"), (s.get("task_metric") or {}).get("delta")
        swept = " ".join(o for o in result.overrides if o not in shared) or "(defaults)"
        lines.append(f"  {swept[:41]:<42}{result.status:<10}{state(s) if result.status == 'FINISHED' else '':<10}"
                     f"{'' if p50 is None else f'{p50:.3f}':>9}"
                     f"{'' if speedup is None else f'{speedup:.2f}x':>9}"
                     f"{'' if delta is None else f'{delta:+.4f}':>10}  {result.tracking.run_id or ''}")
    print("\n".join(lines), flush=True)
    if failed or len(results) < expected:
        return 1
    return EXIT_TRACKING_INCOMPLETE if incomplete else 0


def state(summary: Mapping[str, Any]) -> str:
    """What a finished job's figures are worth: 'rejected' (by the accuracy gate), else the
    timings' 'invalid' / 'unstable' / 'stable' ('' when nothing was timed)."""
    if summary.get("accepted") is False:
        return "rejected"
    return stability(summary) or ""


def close(sweep_dir: Path, stop: Interrupted, stores: list[tuple[str, str]]) -> None:
    """After a signal: every job left RUNNING ends KILLED; one line says what happened."""
    from ptflow.runs.stale import close_sweep

    close_sweep(sweep_dir, f"the sweep was stopped by {stop.signal_name}", stop.exit_code, stores)
    records = run_records(sweep_dir.glob(f"*/{RESULT_FILE}"))
    counts = {s: sum(r.status == s for r in records) for s in ("FINISHED", "FAILED", "KILLED")}
    print(f"ptflow: sweep stopped by {stop.signal_name}: {counts['FINISHED']} finished, "
          f"{counts['FAILED']} failed, {counts['KILLED']} ended KILLED; records in {sweep_dir}",
          file=sys.stderr)


def close_parents(sweep_dir: Path, expected: int | None, stopped_by: str | None = None) -> None:
    """The sweep's parent MLflow run(s): counts, comparison, final status; one line each."""
    from ptflow.runs.sweep_parent import close_parents as close

    for line in close(sweep_dir, expected, stopped_by):
        print(line, flush=True)


def launcher_failed(error: Exception, launch: Any) -> int:
    """A sweep's launcher died under its jobs (joblib: a worker killed by the OOM killer):
    the jobs it left RUNNING end KILLED, the table says how far it got, exit 1."""
    from ptflow.core import lifecycle
    from ptflow.core.errors import first_line
    from ptflow.runs.stale import close_sweep

    unmeasured = nothing_measured(launch.dir)
    if unmeasured is not None:   # the sweeper gave up: no trial returned an objective
        print(f"ptflow: {unmeasured}", file=sys.stderr)
    else:
        print(f"ptflow: the sweep's launcher failed: {type(error).__name__}: {first_line(error)}", file=sys.stderr)
    with lifecycle.protected():
        close_sweep(launch.dir, f"the sweep's launcher failed ({type(error).__name__})", 1, launch.stores)
    report(launch.dir, launch.expected)
    close_parents(launch.dir, launch.expected)
    return 1 if unmeasured is None else EXIT_NOTHING_MEASURED


def nothing_measured(sweep_dir: Path | None) -> str | None:
    """When every job of the sweep finished but none returned an objective because its timings
    were invalid (a search's sweeper then stops: Optuna's "No trials are completed yet"), the
    one line that says so, with the dispersion seen and what to do; else None."""
    if sweep_dir is None:
        return None
    records = run_records(Path(sweep_dir).glob(f"*/{RESULT_FILE}"))
    if not records or any(r.status != "FINISHED" or not (r.summary or {}).get("invalid") for r in records):
        return None
    seen = [v for r in records for k, v in r.metrics.items()
            if k.startswith("benchmark.") and k.endswith((".dispersion", ".dispersion_repeats"))]
    limits = {str((r.config.get("benchmark") or {}).get("invalid_dispersion")) for r in records}
    spread = f"IQR/median up to {max(seen):.2f}" if seen else "IQR/median too high"
    return (f"the search has no completed trial: all {len(records)} trial(s) finished, but every one's timings "
            f"were invalid ({spread}, above benchmark.invalid_dispersion={'/'.join(sorted(limits))}): this "
            f"machine was too busy to measure. Rerun on a quieter machine, or with fewer parallel jobs; the "
            f"trials' records are in {sweep_dir}")


def skip_checked_batches() -> None:
    """Hydra's sweepers compose every job of a batch once more before launching it, to find
    a job that cannot be composed before any runs. The pre-flight has just composed those
    very jobs (`load_sweep_config`, the same overrides) and planned them: composing them a
    third time costs ~0.25 s a job and checks nothing new. Jobs it did not check (a
    sampling sweeper's trials) are still composed by Hydra's own check."""
    from hydra.plugins.sweeper import Sweeper

    original = Sweeper.validate_batch_is_legal
    if getattr(original, "ptflow_checked", False):
        return

    def validate_batch_is_legal(self: Sweeper, batch: Any) -> None:
        from ptflow.app.launch import LAUNCH

        unchecked = [overrides for overrides in batch if tuple(overrides) not in LAUNCH.checked]
        if unchecked:
            original(self, unchecked)

    validate_batch_is_legal.ptflow_checked = True   # type: ignore[attr-defined]
    Sweeper.validate_batch_is_legal = validate_batch_is_legal   # type: ignore[method-assign]
