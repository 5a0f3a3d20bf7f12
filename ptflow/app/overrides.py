"""When Hydra refuses a command line, say everything that is wrong with it at once.

Hydra stops at the first override it cannot apply. ptflow then checks every override
on its own — group options, keys (with did-you-mean), sweeps given without -m — and
plans the config that the remaining overrides compose into, so one report lists all
problems. Hydra's own message is kept when nothing more precise is found (a YAML
error with its file and line, a config name that does not exist).

`ptflow --help` reads the config groups from here too: the plan's modules (and torch, which
the stage modules import) load only once a config is checked.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ptflow.core.errors import ConfigError, Problem, did_you_mean


@dataclass(frozen=True)
class Source:
    """Where the config comes from: the primary dir, its config name, extra dirs (-cd)."""

    primary: Path
    name: str = "config"
    extra: tuple[Path, ...] = ()

    @property
    def dirs(self) -> tuple[Path, ...]:
        return (self.primary, *self.extra)


PTFLOW_SEARCHPATH = "pkg://ptflow.conf"   # where ptflow's own config and groups are found


def source_of(args: Any) -> Source:
    """The config source a parsed `ptflow` command line names (-cp, -cn, -cd, hydra.searchpath)."""
    from ptflow.app.args import CONFIG_DIR

    primary = Path(args.config_path).resolve() if args.config_path else CONFIG_DIR
    extra = tuple(_searchpath(args.overrides))
    return Source(primary, args.config_name or "config",
                  ((Path(args.config_dir).resolve(),) if args.config_dir else ()) + extra)


def _searchpath(overrides: Sequence[str]) -> list[Path]:
    """Folders that `hydra.searchpath=[...]` adds (file:// and pkg:// entries)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") != "hydra.searchpath":
            continue
        found = []
        for item in value.strip("[]").split(","):
            item = item.strip().strip("'\"")
            if item.startswith("file://"):
                found.append(Path(item[len("file://"):]).resolve())
            elif item.startswith("pkg://"):
                try:
                    found.append(Path(str(resources.files(item[len("pkg://"):].replace("/", ".")))))
                except Exception:   # Hydra reports a missing package in its own words
                    pass
        return found
    return []


def option_groups(config_dirs: Sequence[Path]) -> dict[str, set[str]]:
    """Top-level config groups (folders with .yaml files) and their options."""
    groups: dict[str, set[str]] = {}
    for root in config_dirs:
        for folder in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
            options = {f.stem for f in folder.glob("*.yaml")}
            if options:
                groups.setdefault(folder.name, set()).update(options)
    return groups


def explain(overrides: Sequence[str], source: Source, multirun: bool, refusal: BaseException) -> ConfigError:
    """Every problem with `overrides` (Hydra refused them with `refusal`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from ptflow.app.settings import compile_plan

    if not any((folder / f"{source.name}.yaml").is_file() for folder in source.dirs):
        names = sorted({p.stem for folder in source.dirs for p in folder.glob("*.yaml")})
        return ConfigError.single("--config-name", source.name, f"a primary config in {source.primary}: "
                                  + ", ".join(names), did_you_mean(source.name, names))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        return ConfigError.single("overrides", " ".join(overrides), "key=value items", str(error))
    groups = option_groups(source.dirs)
    problems: list[Problem] = []
    usable: dict[int, str] = {}          # per override: one value that can be composed
    for index, override in enumerate(parsed):
        name, values = override.key_or_group, _values(override)
        if override.is_sweep_override() and not multirun:
            problems.append(Problem(name, ",".join(values) or override.input_line,
                                    "one value (sweeping several needs -m / --multirun)",
                                    f"run: ptflow -m {override.input_line}"))
        elif name in groups and not name.startswith("hydra"):
            bad = [v for v in values if v not in groups[name] and v != "null"]
            problems += [Problem(name, value, f"an option of group '{name}': " + ", ".join(sorted(groups[name])),
                                 did_you_mean(value, groups[name])) for value in bad]
            good = [v for v in values if v not in bad]
            if good or not values:
                usable[index] = f"{override.get_key_element()}={good[0]}" if good else override.input_line
        else:
            usable[index] = f"{override.get_key_element()}={values[0]}" if values else override.input_line
    group_items = [usable[i] for i, o in enumerate(parsed) if i in usable and o.key_or_group in groups]
    try:
        composed = _compose(source, group_items)
        base, _ = job_config(composed, " ".join(group_items), resolve=False)
    except ConfigError as error:
        return ConfigError(problems + list(error.problems))
    for index, override in enumerate(parsed):
        if index in usable and override.key_or_group not in groups and not override.key_or_group.startswith("hydra"):
            problem = _unknown_key(override, base)
            if problem is not None:
                problems.append(problem)
                del usable[index]
    rest = list(usable.values())
    try:   # what the rest composes into: its plan's problems belong in the same report
        if rest != group_items:   # (the same overrides compose the same config: once is enough)
            composed = _compose(source, rest)
        config, choices = job_config(composed, " ".join(rest))
        problems += deleted_stages(rest, config)
        compile_plan(config, choices, import_targets=False)   # the refusal comes first, and fast
    except ConfigError as error:
        problems += error.problems
    if not problems:
        problems.append(Problem("command line", " ".join(overrides) or "(no overrides)",
                                "a config Hydra can compose", " ".join(str(refusal).split())))
    return ConfigError(problems)


def deleted_stages(overrides: Sequence[str], config: Mapping[str, Any]) -> list[Problem]:
    """`~quantize` removes the quantize node, not the stage: a stage left in the pipeline would
    run on its built-in defaults. Refuse, naming the pipeline to write instead."""
    from ptflow.core.stage import load_stages

    pipeline = [str(name) for name in config.get("pipeline") or ()]
    registry = load_stages()
    problems = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if not key.startswith("~") or "." in key:
            continue
        node = key[1:].split("/")[-1]
        stages = [name for name in pipeline if name in registry and node in registry[name].config_keys]
        if stages:
            kept = [name for name in pipeline if name not in stages]
            problems.append(Problem(key, override, f"a node no stage of the pipeline reads (stage {stages[0]!r} "
                                    f"reads {node!r}, and would run on built-in defaults without it)",
                                    f"to run without {stages[0]}, drop it from the pipeline instead: "
                                    f"'pipeline=[{','.join(kept)}]'"))
    return problems


def _values(override: Any) -> list[str]:
    """The values an override sets, as typed ('true', quoting and lists kept)."""
    try:
        if override.is_sweep_override():
            return list(override.sweep_string_iterator())
    except Exception:   # glob() and interval() need Hydra's loader or cannot be listed: judged by Hydra
        return []
    if override.is_delete() and override.value() is None:
        return []
    return [override.input_line.split("=", 1)[1]]


def _unknown_key(override: Any, base: Mapping[str, Any]) -> Problem | None:
    """A problem if the override's key is not in the composed config (None for +key, ++key)."""
    path = override.key_or_group.split(".")
    if override.get_key_element().startswith("+") or override.package:
        return None
    node: Any = base
    for depth, part in enumerate(path):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        allowed, free_form = _schema_keys(path[:depth], base)
        if free_form or part in allowed:
            return Problem(override.key_or_group, override.get_value_element_as_str(),
                           f"a key the yaml of '{path[0]}' lists",
                           f"it is a field of the schema the yaml leaves out: ++{override.input_line} sets it")
        siblings = set(node) if isinstance(node, Mapping) else set()
        where = ".".join(path[:depth]) or "the top level"
        return Problem(override.key_or_group, override.get_value_element_as_str(),
                       f"a key of {where}: " + ", ".join(sorted(siblings | allowed)),
                       did_you_mean(part, siblings | allowed) or f"use +{override.key_or_group}=... to add a new key")
    return None


def _schema_keys(path: Sequence[str], base: Mapping[str, Any]) -> tuple[set[str], bool]:
    """(field names the schema allows under `path`, whether that node is a free-form mapping)."""
    from ptflow.app.settings import RunSettings
    from ptflow.core.stage import load_stages

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


def compose_config(source: Source, overrides: Sequence[str], resolve: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(config without the hydra node, group choices), composed by Hydra's compose API."""
    return job_config(_compose(source, overrides), " ".join(overrides), resolve)


def _compose(source: Source, overrides: Sequence[str]) -> Any:
    """The config Hydra composes from `source` with `overrides`, hydra node included."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ptflow.app.args import CONFIG_DIR

    extra = [f"hydra.searchpath=[{','.join('file://' + str(d) for d in source.extra)}]"] if source.extra else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(source.primary), version_base="1.3", job_name="ptflow"):
            cfg = compose(source.name, overrides=[*overrides, *extra], return_hydra_config=True)
    except Exception as error:  # Hydra raises several types; all mean "this config does not compose"
        # keep every line: a YAML error names its file, line and column on the second one
        text = " ".join(str(error).split())
        if "Could not " in text and PTFLOW_SEARCHPATH not in text and source.primary != CONFIG_DIR:
            text += (f" (a primary config of your own that builds on ptflow's config or its groups needs "
                     f"`hydra: {{searchpath: [{PTFLOW_SEARCHPATH}]}}` in it: see Hydra and MLflow, "
                     "'Your own primary config')")
        raise ConfigError.single("overrides", " ".join(overrides), "a config that composes", text) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def job_config(cfg: Any, described_as: str, resolve: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """(plain config without the hydra node, group choices) of a composed config, with the
    hydra node in force while resolving, so ${hydra:...} interpolations work as in a job."""
    import copy

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    choices = {k: str(v) for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if v is not None}
    saved = HydraConfig.instance().cfg
    task = copy.deepcopy(cfg)
    try:
        HydraConfig.instance().set_config(copy.deepcopy(cfg))   # it marks the node read-only
        with read_write(task), open_dict(task):
            del task["hydra"]
        return OmegaConf.to_container(task, resolve=resolve), choices
    except Exception as error:
        raise ConfigError.single("config", described_as, "interpolations that resolve",
                                 " ".join(str(error).split())) from None
    finally:
        HydraConfig.instance().cfg = saved
