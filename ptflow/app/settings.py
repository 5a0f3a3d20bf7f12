"""The run-wide settings (everything that is not a stage's own node) and the whole compile
step: composed config -> ``RunSettings`` + checked stages -> ``Plan``, or one ConfigError
with every problem (a missing file, a device this machine lacks, a bad tag) at once.
"""
from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ptflow.core.errors import ConfigError, Problem, did_you_mean
from ptflow.core.files import creatable_dir_problem
from ptflow.core.plan import Plan, PlannedStage, build_config, plan_stages, unique  # noqa: F401 (old ptflow.plan names)
from ptflow.core.stage import load_stages
from ptflow.core.targets import resolve_path
from ptflow.decide import objective
from ptflow.decide.budget import CompareConfig
from ptflow.measure import device
from ptflow.measure.device import DeviceConfig
from ptflow.runs.tracking import TrackingConfig


SEED_RANGE = (-(2**63), 2**64 - 1)
DETERMINISTIC_VALUES = (False, True, "warn")
CACHE_VALUES = {"on": True, "true": True, "off": False, "false": False}
# tags a user may not set (`tags.<key>`): ptflow sets these itself, and stages add `accepted`
OWN_TAG_PREFIXES = ("ptflow.", "mlflow.")
OWN_TAGS = frozenset({"pipeline", "recipe", "experiment", "device", "git_sha", "git_dirty", "hostname", "accepted",
                      "benchmark.stability"})
TAG_KEY = re.compile(r"^[/\w.\- :]+$")   # MLflow's rule for tag names
MAX_TAG_KEY, MAX_TAG_VALUE = 250, 5000      # MLflow's key limit; ptflow cuts tag values at 5000
RUN_ID = re.compile(r"^[\w\-]{1,250}$")


@dataclass(frozen=True)
class RunSettings:
    """The pipeline-wide part of the config (everything that is not a stage's own node)."""

    pipeline: tuple[str, ...]
    device: DeviceConfig = field(default_factory=DeviceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    dry_run: bool = False
    outputs_dir: str = "outputs"
    plugins: tuple[str, ...] = ()
    task_name: str = "ptflow"
    objective: str | None = "benchmark.speedup_p50"   # the metric a job returns to a sweeper
    deterministic: bool | str = False   # true: deterministic algorithms or fail; warn: warn instead
    tags: dict[str, Any] = field(default_factory=dict, hash=False)   # extra MLflow run tags (nested: dotted names)
    reproduces: str | None = None       # set by ptflow-reproduce: the MLflow run id this run re-runs
    cache: bool | str = True            # the stage cache under <outputs_dir>/cache/stages (on | off)
    compare: CompareConfig = field(default_factory=CompareConfig)   # what a sweep's parent run picks under

    def __post_init__(self) -> None:
        problems = []
        if not self.pipeline:
            problems.append(Problem("pipeline", [], "a list of at least one stage, e.g. [load, validate]"))
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            problems.append(Problem("seed", self.seed, f"an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]} "
                                    "(what torch.manual_seed accepts)"))
        if isinstance(self.deterministic, str) and self.deterministic not in DETERMINISTIC_VALUES:
            problems.append(Problem("deterministic", self.deterministic, "true, false or warn",
                                    "true: torch.use_deterministic_algorithms(True) (an op without a "
                                    "deterministic implementation fails the run); warn: it only warns"))
        tags = _flat_tags(self.tags)   # +tags.ptflow.x=1 composes as {ptflow: {x: 1}}: the tag 'ptflow.x'
        problems.extend(_tag_problems(tags))
        # tag values are text in MLflow: 3 -> '3', true -> 'true'
        object.__setattr__(self, "tags", {k: _tag_text(v) for k, v in tags.items()})
        if self.reproduces is not None and not RUN_ID.match(self.reproduces):
            problems.append(Problem("reproduces", self.reproduces, "an MLflow run id (letters, digits, '_', '-')",
                                    "ptflow-reproduce sets this key; leave it null"))
        cache = CACHE_VALUES.get(str(self.cache).lower()) if not isinstance(self.cache, bool) else self.cache
        if cache is None:
            problems.append(Problem("cache", self.cache, "on or off", "off bypasses the stage cache: every "
                                    "stage runs, nothing is read or written under <outputs_dir>/cache/stages"))
        object.__setattr__(self, "cache", bool(cache))
        if not self.outputs_dir.strip():
            problems.append(Problem("outputs_dir", self.outputs_dir, "a directory path, e.g. outputs",
                                    "an empty path would put run dirs at the filesystem root"))
        if problems:
            raise ConfigError(problems)


def _flat_tags(tags: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tags.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flat_tags(value, name + "."))
        else:
            flat[name] = value
    return flat


def _tag_text(value: object) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _tag_problems(tags: Mapping[str, object]) -> list[Problem]:
    """MLflow's rules for a tag name (characters, no path tricks, 250 chars), a value of at
    most 5000 characters, and no name that ptflow sets itself."""
    problems = []
    for key, value in tags.items():
        where = f"tags.{key}"
        if key.startswith(OWN_TAG_PREFIXES) or key in OWN_TAGS:
            problems.append(Problem(where, value, "a tag name ptflow does not set itself",
                                    f"ptflow sets '{key}' (its own tags: {', '.join(sorted(OWN_TAGS))}, the "
                                    "config groups, and every ptflow.* / mlflow.* name); pick another name"))
        elif not TAG_KEY.match(key) or len(key) > MAX_TAG_KEY or posixpath.normpath(key) != key \
                or key.startswith(("/", "..")):
            problems.append(Problem(where, value, "a tag name MLflow accepts: letters, digits, '_', '-', '.', "
                                    "' ', ':', '/' (not leading, no '..' or '//'), at most 250 characters",
                                    "e.g. tags.team=vision"))
        elif not isinstance(value, (str, int, float, bool)):
            problems.append(Problem(where, value, "a text, number or true/false value",
                                    "MLflow tags are text; e.g. +tags.team=vision"))
        elif len(_tag_text(value)) > MAX_TAG_VALUE:
            problems.append(Problem(where, f"<{len(_tag_text(value))} characters>",
                                    f"a value of at most {MAX_TAG_VALUE} characters"))
    return problems


SETTINGS_KEYS = tuple(f.name for f in fields(RunSettings))
RENAMED = {"accuracy_budget": "replaced by accuracy.max_drop (the gate every run is judged by; "
                              "accuracy.enforce=true also stops a rejected run)"}


def _outputs_dir_problems(settings: RunSettings) -> list[Problem]:
    reason = creatable_dir_problem(resolve_path(settings.outputs_dir))
    if reason is None:
        return []
    return [Problem("outputs_dir", settings.outputs_dir, "a directory ptflow can create and write",
                    f"{reason}; pick another outputs_dir")]


def compile_plan(cfg: Mapping[str, Any], choices: Mapping[str, str] | None = None,
                 import_targets: bool = True) -> Plan:
    """Check `cfg` (plain, resolved, without the hydra node) and return its Plan.
    ``import_targets=False``: check the `_target_` builders without importing them (see
    ``core.stage.Environment``)."""
    problems: list[Problem] = []
    settings = build_config(RunSettings, {k: cfg[k] for k in SETTINGS_KEYS if k in cfg}, "", problems)
    plugins = settings.plugins if settings else ()
    try:
        registry = load_stages(plugins)
    except ConfigError as error:
        problems.extend(error.problems)
        registry = load_stages()
    known = set(SETTINGS_KEYS) | {k for spec in registry.values() for k in spec.config_keys}
    for key in cfg:
        if key not in known and key != "hydra":
            problems.append(Problem(key, cfg[key], "a top-level key: " + ", ".join(sorted(known)),
                                    RENAMED.get(key) or did_you_mean(key, known) or "remove it"))
    if settings is None:
        raise ConfigError(problems)
    stages = plan_stages(settings.pipeline, settings.device.type.value, cfg, registry, problems, import_targets)
    problems.extend(_run_wide_problems(settings, cfg))
    problems.extend(device.check(settings.device))
    problems.extend(_outputs_dir_problems(settings))
    problems.extend(objective.problems(settings.objective, settings.pipeline))
    if problems:
        raise ConfigError(unique(problems))
    return Plan(settings, tuple(stages), dict(choices or {}))


def _run_wide_problems(settings: RunSettings, cfg: Mapping[str, Any]) -> list[Problem]:
    """Settings that contradict each other across keys."""
    problems = []
    for key, value in settings.tags.items():
        if key in cfg:   # a config group or key: ptflow tags the group's choice under this name
            problems.append(Problem(f"tags.{key}", value, "a tag name that is not a config group or key",
                                    f"ptflow tags each run with its '{key}' choice itself; pick another name"))
    if settings.deterministic is not False and settings.device.cudnn_benchmark:
        mode = _tag_text(settings.deterministic)
        problems.append(Problem("device.cudnn_benchmark", True, f"false with deterministic={mode}",
                                "cudnn.benchmark picks convolution algorithms by timing them, which can "
                                "differ from run to run; set device.cudnn_benchmark=false or deterministic=false"))
    return problems


