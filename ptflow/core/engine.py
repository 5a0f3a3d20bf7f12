"""Runs a checked Plan: stage after stage, timed, with hooks around each one."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm

from ptflow.core import typed
from ptflow.core.artifact import Artifact, StageRecord
from ptflow.core.errors import Rejected, StageError
from ptflow.core.plan import Plan, PlannedStage
from ptflow.core.stage import RunContext
from ptflow.core.stage_cache import run_cached

log = logging.getLogger(__name__)


class Hook(Protocol):
    """Subscribers to run events; implement any subset (missing methods are skipped)."""

    def before_run(self, plan: Plan, ctx: RunContext) -> None: ...
    def before_stage(self, planned: PlannedStage, artifact: Artifact | None) -> None: ...
    def after_stage(self, record: StageRecord, artifact: Artifact) -> None: ...
    def on_error(self, error: StageError, artifact: Artifact | None) -> None: ...
    def after_run(self, artifact: Artifact | None, error: BaseException | None) -> None: ...


def progress(iterable: Iterable, **kwargs: Any) -> Iterable:
    """tqdm that stays quiet when stderr is not a terminal (CI logs, tests)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", None)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def _emit(hooks: Sequence[Any], event: str, *args: Any) -> None:
    for hook in hooks:
        handler = getattr(hook, event, None)
        if handler is not None:
            handler(*args)


def run(plan: Plan, ctx: RunContext, hooks: Sequence[Any] = ()) -> Artifact:
    """Run every stage of `plan`; on failure raise StageError naming the stage.

    Whatever stages wrote under the run dir stays on disk; hooks see every event, and
    ``after_run`` is always called (with the error, if any).
    """
    artifact: Artifact | None = None
    error: BaseException | None = None
    _emit(hooks, "before_run", plan, ctx)
    try:
        _start(plan.stages, ctx, hooks)
        with tqdm(plan.stages, desc="pipeline", unit="stage", leave=False, disable=None) as bar:
            for index, planned in enumerate(bar):
                bar.set_postfix_str(planned.name)
                artifact = _run_stage(planned, artifact, ctx, hooks)
                if "baseline" in planned.stage.provides:
                    artifact = _early_checks(plan.stages[index + 1:], artifact, ctx, hooks)
        return artifact
    except BaseException as exc:
        error = exc
        raise
    finally:
        _stop(plan.stages)
        _emit(hooks, "after_run", artifact, error)


def _start(stages: Sequence[PlannedStage], ctx: RunContext, hooks: Sequence[Any]) -> None:
    """Before the first stage, each stage with a ``start`` begins its slow preparation in the
    background (export: its fresh-process check imports torch while the model loads). What a
    stage starts holds the device's timed-section lock while it works, so no timing runs beside
    it; ``stop`` ends whatever its run did not use (the run failed or stopped before it)."""
    for planned in stages:
        start = getattr(planned.stage, "start", None)
        if start is None:
            continue
        try:
            start(ctx)
        except Exception as exc:
            failure = StageError(planned.name, exc)
            _emit(hooks, "on_error", failure, None)
            raise failure from exc


def _stop(stages: Sequence[PlannedStage]) -> None:
    for planned in stages:
        stop = getattr(planned.stage, "stop", None)
        if stop is None:
            continue
        try:
            stop()
        except Exception:   # tidying up must not hide how the run ended
            log.warning("stage %s: stopping its background work failed", planned.name, exc_info=True)


def _early_checks(later: Sequence[PlannedStage], artifact: Artifact, ctx: RunContext,
                  hooks: Sequence[Any]) -> Artifact:
    """Right after the baseline is recorded, each later stage with an ``early_check`` looks at
    the unoptimized model for what would make it fail much later (export's torch.export trace
    with the run's dynamic dims): a failure stops the run now, named by that stage, before any
    quantize, compile or benchmark work. Each check returns metrics (its own cost)."""
    for planned in later:
        check = getattr(planned.stage, "early_check", None)
        if check is None:
            continue
        try:
            metrics = check(artifact, ctx) or {}
        except Exception as exc:
            failure = StageError(planned.name, exc)
            _emit(hooks, "on_error", failure, artifact)
            raise failure from exc
        artifact = artifact.with_metrics(metrics)
    return artifact


def _run_stage(planned: PlannedStage, artifact: Artifact | None, ctx: RunContext,
               hooks: Sequence[Any]) -> Artifact:
    _emit(hooks, "before_stage", planned, artifact)
    log.info("stage %s: starting", planned.name)
    for key, message in planned.warnings:
        ctx.warn(key, message)
    started = time.perf_counter()
    try:
        result, cache_key = run_cached(planned, artifact, ctx, lambda c: planned.stage.run(artifact, c))
        if not isinstance(result, Artifact):
            raise TypeError(f"run() returned {type(result).__name__}, not an Artifact")
        if result.form != planned.form_out:
            raise TypeError(f"run() produced a {result.form} model; the stage declared {planned.form_out}")
    except Exception as exc:
        failure = StageError(planned.name, exc)
        _emit(hooks, "on_error", failure, artifact)
        raise failure from exc
    duration = time.perf_counter() - started
    record = StageRecord(planned.name, typed.to_plain(planned.config), duration,
                         planned.form_in, planned.form_out, cache_key)
    result = result.evolve(lineage=result.lineage + (record,)).with_metrics(
        {f"{planned.name}.duration_s": duration})
    if cache_key is not None:   # hits and misses per run (metric cache.<stage>_hit, tag ptflow.cache.<stage>)
        outcome = ctx.cache.outcomes[planned.name]
        result = result.with_metrics({f"cache.{planned.name}_hit": float(outcome == "hit")}).with_tags(
            {f"ptflow.cache.{planned.name}": outcome})
    log.info("stage %s: done in %.2fs", planned.name, duration)
    _emit(hooks, "after_stage", record, result)   # the evidence is recorded, rejected or not
    if result.rejected and (artifact is None or artifact.rejected != result.rejected):
        failure = StageError(planned.name, Rejected(result.rejected))
        _emit(hooks, "on_error", failure, result)
        raise failure
    return result
