"""Check a command line before Hydra launches anything: overrides, every sweep job's plan.

Hydra stops at the first bad override with its own message; here every override is
checked (group options, keys, value types) and every job of a sweep is composed and
compiled, so one ConfigError lists all problems before any job starts.
"""
from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptflow.errors import ConfigError, Problem, did_you_mean
from ptflow.plan import Plan, RunSettings, compile_plan
from ptflow.stage import load_stages

PROGRESS_FROM_JOBS = 64   # show a progress bar when checking this many jobs or more


@dataclass(frozen=True)
class Job:
    overrides: tuple[str, ...]       # one value per key, as Hydra will launch it
    config: Mapping[str, Any]        # resolved, without the hydra node
    plan: Plan
    dirs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # hydra.run.dir / sweep.dir, resolved


@dataclass(frozen=True)
class Checked:
    overrides: tuple[str, ...]       # the command line's overrides, normalised for Hydra
    jobs: tuple[Job, ...]


def option_groups(config_dirs: Sequence[Path]) -> dict[str, set[str]]:
    """Top-level config groups (folders with .yaml files) and their options."""
    groups: dict[str, set[str]] = {}
    for root in config_dirs:
        for folder in (p for p in root.iterdir() if p.is_dir()):
            options = {f.stem for f in folder.glob("*.yaml")}
            if options:
                groups.setdefault(folder.name, set()).update(options)
    return groups


def check(overrides: Sequence[str], config_dir: Path, extra_dirs: Sequence[Path] = (),
          multirun: bool = False) -> Checked:
    """Validate the overrides and every job they describe; raise ConfigError listing all problems."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise ConfigError.single("overrides", " ".join(overrides), "key=value items", str(error)) from None
    groups = option_groups([config_dir, *extra_dirs])
    problems: list[Problem] = []
    sweeps: list[list[str]] = []       # per override: the 'key=value' items it expands to
    for override in parsed:
        key = override.get_key_element()
        values = _values(override)
        if override.is_sweep_override() and not multirun:
            problems.append(Problem(override.key_or_group, ",".join(values),
                                    "one value (sweeping several needs -m / --multirun)",
                                    f"run: ptflow -m {override.input_line}"))
            sweeps.append([])
            continue
        name = override.key_or_group
        if name.startswith("hydra") or override.is_delete():
            sweeps.append([f"{key}={v}" for v in values] if values else [override.input_line])
        elif name in groups:
            bad = [v for v in values if v not in groups[name] and v != "null"]
            for value in bad:
                problems.append(Problem(name, value, f"an option of group '{name}': "
                                        + ", ".join(sorted(groups[name])), did_you_mean(value, groups[name])))
            sweeps.append([f"{key}={v}" for v in values if v not in bad])
        else:
            sweeps.append([f"{key}={v}" for v in values])
    group_items = [s for s, o in zip(sweeps, parsed) if o.key_or_group in groups]
    base = _compose([config_dir, *extra_dirs], [s[0] for s in group_items if s])
    normalised: list[list[str]] = []   # per override: its items, as each job will see them
    launch: list[str] = []             # per override: the text Hydra gets (the user's own)
    for override, items in zip(parsed, sweeps):
        if override.key_or_group in groups or override.key_or_group.startswith("hydra") or not items:
            normalised.append(items)
            launch.append(override.input_line)
            continue
        prefix = _key_prefix(override, base, problems)
        normalised.append([] if prefix is None else [prefix + item for item in items])
        launch.append((prefix or "") + override.input_line)
    try:   # plan the jobs with the overrides that passed, so one report lists everything
        jobs = _plan_jobs([config_dir, *extra_dirs], [items for items in normalised if items])
    except ConfigError as error:
        problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)
    return Checked(tuple(launch), jobs)


def _values(override: Any) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    if override.is_delete() and override.value() is None:
        return []
    return [override.input_line.split("=", 1)[1]]   # as typed: keeps 'true', quoting, lists


def _key_prefix(override: Any, base: Mapping[str, Any], problems: list[Problem]) -> str | None:
    """'' if the key exists, '++' for a schema field the yaml omits, None (and a problem) if unknown."""
    path = override.key_or_group.split(".")
    if override.get_key_element().startswith("+") or override.package:
        return ""
    node: Any = base
    for depth, part in enumerate(path):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        allowed, free_form = _schema_keys(path[:depth], base)
        if free_form or part in allowed:
            return "++"   # a schema field the yaml leaves at its default
        siblings = set(node) if isinstance(node, Mapping) else set()
        where = ".".join(path[:depth]) or "the top level"
        problems.append(Problem(override.key_or_group, override.get_value_element_as_str(),
                                f"a key of {where}: " + ", ".join(sorted(siblings | allowed)),
                                did_you_mean(part, siblings | allowed)
                                or f"use +{override.key_or_group}=... to add a new key"))
        return None
    return ""


def _schema_keys(path: Sequence[str], base: Mapping[str, Any]) -> tuple[set[str], bool]:
    """(field names the schema allows under `path`, whether that node is a free-form mapping)."""
    registry = load_stages(tuple(base.get("plugins") or ()))
    if not path:
        keys = {f.name for f in dataclasses.fields(RunSettings)}
        return keys | {key for spec in registry.values() for key in spec.config_keys}, False
    owners = {key: spec for spec in registry.values() for key in spec.config_keys}
    head, *rest = path
    spec = owners.get(head)
    if spec is None:
        tp: Any = typing.get_type_hints(RunSettings).get(head)
    elif len(spec.config_keys) == 1:
        tp = spec.config_cls
    else:
        tp = typing.get_type_hints(spec.config_cls)[head]
    for part in rest:
        tp = _unwrap(tp)
        tp = typing.get_type_hints(tp).get(part) if dataclasses.is_dataclass(tp) else None
    tp = _unwrap(tp)
    if dataclasses.is_dataclass(tp):
        return {f.name for f in dataclasses.fields(tp)}, False
    return set(), typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Any)


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _compose(config_dirs: Sequence[Path], overrides: Sequence[str]) -> dict[str, Any]:
    """Compose with Hydra; return the config (unresolved, no hydra node)."""
    cfg, _ = compose_config(config_dirs, overrides, resolve=False)
    return cfg


def compose_config(config_dirs: Sequence[Path], overrides: Sequence[str], resolve: bool,
                   dirs: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(config without the hydra node, group choices); fills `dirs` with Hydra's run/sweep dirs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    extra = [f"hydra.searchpath=[{','.join('file://' + str(d) for d in config_dirs[1:])}]"] \
        if len(config_dirs) > 1 else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dirs[0]), version_base="1.3", job_name="ptflow"):
            cfg = compose("config", overrides=[*overrides, *extra], return_hydra_config=True)
    except Exception as error:  # Hydra raises several types; all mean "this config does not compose"
        # keep every line: a YAML error names its file, line and column on the second one
        raise ConfigError.single("overrides", " ".join(overrides), "a config that composes",
                                 " ".join(str(error).split())) from None
    finally:
        GlobalHydra.instance().clear()
    choices = {k: str(v) for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if v is not None}
    for name in ("run", "sweep") if dirs is not None else ():
        try:
            dirs[name] = str(OmegaConf.select(cfg, f"hydra.{name}.dir"))
        except Exception:  # an interpolation only Hydra's job runtime can resolve: Hydra picks the dir
            pass
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        return OmegaConf.to_container(cfg, resolve=resolve), choices
    except Exception as error:
        raise ConfigError.single("config", " ".join(overrides), "interpolations that resolve",
                                 str(error).splitlines()[0]) from None


def compose_job(config_dirs: Sequence[Path], overrides: Sequence[str]) -> Job:
    dirs: dict[str, str] = {}
    config, choices = compose_config(config_dirs, overrides, resolve=True, dirs=dirs)
    return Job(tuple(overrides), config, compile_plan(config, choices), dirs)


def _plan_jobs(config_dirs: Sequence[Path], sweeps: Sequence[Sequence[str]]) -> tuple[Job, ...]:
    jobs: list[Job] = []
    problems: dict[str, list[str]] = {}
    order: list[Problem] = []
    from tqdm.auto import tqdm

    total = 1
    for items in sweeps:
        total *= len(items)
    combos = itertools.product(*sweeps)   # every job is checked: an unchecked one could be invalid
    for combo in tqdm(combos, total=total, desc="checking jobs", unit="job", leave=False,
                      disable=None if total >= PROGRESS_FROM_JOBS else True):
        try:
            jobs.append(compose_job(config_dirs, combo))
        except ConfigError as error:
            for problem in error.problems:
                text = problem.render()
                if text not in problems:
                    problems[text] = []
                    order.append(problem)
                problems[text].append(" ".join(combo))
    if order:
        several = len(jobs) + len(set(sum(problems.values(), []))) > 1
        raise ConfigError(
            dataclasses.replace(p, hint=(p.hint + "; " if p.hint else "") + "in job(s): "
                                + " | ".join(problems[p.render()][:3])) if several else p
            for p in order)
    return tuple(jobs)
