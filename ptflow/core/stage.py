"""The stage contract, the context stages run in, and the registry that finds them.

A stage is a plain class conforming to ``Stage``; its config is a frozen dataclass.
``@register_stage`` adds both to the registry (and the config to Hydra's ConfigStore as
a structured-config schema). ptflow finds stage modules through the ``ptflow.stages``
entry-point group and the ``plugins`` config key, never by importing them by name.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ptflow.core.artifact import Artifact, Form
from ptflow.core.errors import ConfigError, Problem, first_line

ENTRY_POINT_GROUP = "ptflow.stages"


@dataclass(frozen=True)
class Environment:
    """What a stage's preflight may inspect: the requested device, the pipeline it runs in
    and the whole config as plain data (for checks across stages, e.g. "int8_static wants
    compile=inductor after it" or "quantize needs data.calibration")."""

    device_type: str
    pipeline: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    # False when ptflow explains a command line Hydra refused: the `_target_` builders are then
    # checked without importing them (their module exists and defines the name), so the answer
    # comes before torch is imported; their arguments are checked once the line composes
    import_targets: bool = True

    def quantize_method_before(self, stage: str) -> str | None:
        """The quantize recipe that runs before `stage` in this pipeline, if any."""
        pipeline = list(self.pipeline)
        if "quantize" not in pipeline or stage not in pipeline or pipeline.index("quantize") > pipeline.index(stage):
            return None
        return (self.config.get("quantize") or {}).get("method")


@dataclass(frozen=True)
class Note:
    """A line the plan shows under a stage (a sub-step such as calibration, or advice).
    With a ``warning`` key it is also a run warning (tag ``ptflow.warning.<key>``)."""

    text: str
    warning: str | None = None


def ignore_warning(key: str, message: str) -> None:
    """RunContext.warn where nobody listens (unit tests building a context by hand)."""


@dataclass(frozen=True)
class Rebuild:
    """How a stage gets this run rebuilt in a fresh process (benchmark.repeats): start
    ``command`` in ``cwd`` and send it ``job`` (plain data, the run's resolved config among it)
    plus the stage's own fields, one JSON line on its stdin. The job runner provides it; a
    context built by hand has none, and the stage then says it measured one process only."""

    command: tuple[str, ...]
    job: Mapping[str, Any]
    cwd: str


@dataclass(frozen=True)
class RunContext:
    """Per-run facts a stage may use; nothing here is config data.

    ``warn(key, message)`` reports a silent degradation (a cast, skipped keys, noisy
    timings): the job prints it and records it as tag ``ptflow.warning.<key>``. Stages
    warn through it rather than `logging`, so no warning is lost in a log file.
    """

    run_dir: Path
    device: str
    seed: int
    config_hash: str
    settings: Mapping[str, Any]          # device settings in force (device.capture)
    progress: Callable[..., Iterable]    # tqdm-like: progress(iterable, desc=..., total=...)
    warn: Callable[[str, str], None] = field(default=ignore_warning)
    cache: Any = None                    # ptflow.core.stage_cache.StageCache, or None (cache=off)
    rebuild: Rebuild | None = None       # a fresh process rebuilding this run up to a stage, or None

    def path(self, *parts: str) -> Path:
        """A path under the run dir, its parent created."""
        target = self.run_dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


class Stage(Protocol):
    """What every stage provides. Construct with its typed config."""

    requires: ClassVar[frozenset[str]]   # facts earlier stages must have established
    provides: ClassVar[frozenset[str]]   # facts this stage establishes (e.g. "baseline")

    def consumes(self) -> frozenset[Form]:
        """Forms this stage accepts; empty for a source stage (it starts the chain)."""

    def produces(self, given: Form | None) -> Form:
        """The form this stage hands on, given the form it receives."""

    def preflight(self, env: Environment) -> list[Problem]:
        """Cheap checks before anything heavy runs (files exist, device can do it)."""

    def run(self, artifact: Artifact | None, ctx: RunContext) -> Artifact:
        """Do the work; return ``artifact.evolve(...)``."""

    # Optional: ``explain(env) -> list[Note]`` — sub-steps and advice shown in the plan;
    # ``refusal(form) -> str | None`` — why a form it does not consume cannot work (the plan's hint);
    # ``early_check(artifact, ctx) -> dict[str, float] | None`` — called right after the baseline
    #   is recorded (validate), before any stage between: look at the unoptimized model for what
    #   would fail this stage much later and raise (InputError) with the fix now; returns metrics.
    # ``start(ctx)`` — called once before the first stage (ptflow.core.engine): begin slow preparation
    #   in the background (export: its fresh-process check imports torch while the model loads); what
    #   it starts must hold the device's timed-section lock (ptflow.measure.device_lock) while it works;
    # ``stop()`` — called when the run ends, however it ends: end what ``start`` began and ``run`` did not use.
    # ``repeat(artifact, ctx) -> dict`` — in a fresh worker that rebuilt the run up to this stage
    #   (ptflow.app.repeat_worker, through ``RunContext.rebuild``): do the stage's measurement again
    #   and return it as plain data (benchmark.repeats).
    #
    # Optional, the stage cache (ptflow.core.stage_cache; only a stage whose upstream is cached):
    # ``cache = "memory"`` — its result is kept in this process for the next job (a copy of
    #   the module per hit); or ``cache = "disk"`` with
    # ``cache_save(artifact) -> (tensors, meta)`` — the result as named tensors and JSON data;
    # ``cache_restore(artifact, tensors, meta) -> Artifact`` — the result rebuilt from them; derive
    #   numbers (metrics) from the tensors and the artifact rather than reading them from meta;
    # ``cache_check(artifact, tensors, meta) -> str | None`` — called on every disk hit before
    #   restore: why the entry does not match this run (e.g. rerun a sample of the work and
    #   compare), or None. A non-None answer or an exception discards the entry, reruns the
    #   stage and warns ``cache.<stage>``.


@dataclass(frozen=True)
class StageSpec:
    name: str
    stage_cls: type
    config_cls: type
    config_keys: tuple[str, ...]
    summary: str

    def config_data(self, cfg: Mapping[str, Any]) -> object:
        """The plain data to build this stage's config from.

        One key: that top-level node is the config. Several keys: the config class has
        one field per key (``load`` reads both ``model`` and ``data``).
        """
        if len(self.config_keys) == 1:
            return cfg.get(self.config_keys[0], {}) or {}
        return {key: cfg.get(key, {}) or {} for key in self.config_keys}


_REGISTRY: dict[str, StageSpec] = {}
_entry_points_loaded = False


def register_stage(name: str, *, config: type, keys: tuple[str, ...] | None = None):
    """Class decorator: register a stage under `name` with its config dataclass."""

    def decorate(cls: type) -> type:
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        _REGISTRY[name] = StageSpec(name, cls, config, tuple(keys or (name,)), summary)
        _store_schema(name, config)
        return cls

    return decorate


def _store_schema(name: str, config: type) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="ptflow_schema", name=name, node=config)


def load_stages(plugins: Iterable[str] = ()) -> Mapping[str, StageSpec]:
    """Import every stage module: the entry-point group, then `plugins` (module names)."""
    global _entry_points_loaded
    problems: list[Problem] = []
    if not _entry_points_loaded:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as error:  # a broken plugin must name itself, not crash later
                problems.append(Problem(f"entry point {entry.name}", entry.value,
                                        "an importable stage module", f"{type(error).__name__}: {first_line(error)}"))
        _entry_points_loaded = True
    for module in plugins:
        try:
            importlib.import_module(module)
        except Exception as error:   # not found, or broken: a SyntaxError, a raise at import time
            problems.append(Problem("plugins", module, "an importable module of stages",
                                    f"{type(error).__name__}: {first_line(error)}"))
    if problems:
        raise ConfigError(problems)
    return dict(_REGISTRY)

