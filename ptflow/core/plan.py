"""The compiler's core: typed stage configs -> a checked chain of PlannedStages -> a Plan.

Nothing here loads a model. Every problem found (unknown keys, wrong types, a stage order
that breaks the form chain, a stage's own pre-flight) is collected, never raised one by
one. The run-wide settings around the stages (device, tracking, seed, tags) and the
whole compile step that checks them too live in ``ptflow.app.settings``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ptflow.core import typed
from ptflow.core.artifact import Form
from ptflow.core.errors import ConfigError, Problem, did_you_mean, first_line
from ptflow.core.stage import Environment, Note, Stage, StageSpec


@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    config: Any
    stage: Stage
    form_in: Form | None
    form_out: Form
    notes: tuple[Note, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def warnings(self) -> tuple[tuple[str, str], ...]:
        return tuple((n.warning, n.text) for n in self.notes if n.warning)


@dataclass(frozen=True)
class Plan:
    settings: Any   # ptflow.app.settings.RunSettings: the run-wide keys
    stages: tuple[PlannedStage, ...]
    choices: Mapping[str, str] = field(default_factory=dict)

    def render(self) -> str:
        picked = " ".join(f"{k}={v}" for k, v in sorted(self.choices.items()) if not k.startswith("hydra"))
        lines = [f"Plan: {len(self.stages)} stage(s) on {self.settings.device.name}"
                 + (f"  [{picked}]" if picked else "")]
        width = max(len(s.name) for s in self.stages)
        for number, planned in enumerate(self.stages, 1):
            given = "(source)" if planned.form_in is None else str(planned.form_in)
            lines.append(f"  {number}. {planned.name:<{width}}  {given:>9} -> {planned.form_out:<9}"
                         f"  {planned.spec.summary}".rstrip())
            lines.append(f"     {_one_line(typed.to_plain(planned.config))}")
            lines.extend(f"     {'warning: ' if note.warning else ''}{note.text}" for note in planned.notes)
        return "\n".join(lines)


def _one_line(config: object) -> str:
    return json.dumps(config, separators=(", ", "="), default=str).replace('"', "")


def build_config(cls: type, data: object, path: str, problems: list[Problem]) -> Any:
    try:
        return typed.build(cls, data, path)
    except ConfigError as error:
        problems.extend(error.problems)
        return None


def plan_stages(pipeline: tuple[str, ...], device_type: str, cfg: Mapping[str, Any],
                registry: Mapping[str, StageSpec], problems: list[Problem],
                import_targets: bool = True) -> list[PlannedStage]:
    """Each stage of `pipeline` built from its typed config, pre-flighted, and chained: the
    forms and facts each hands on must be what the next consumes. Problems go to `problems`.
    ``import_targets``: see ``Environment``."""
    env = Environment(device_type, pipeline, cfg, import_targets)
    planned: list[PlannedStage] = []
    form: Form | None = None
    form_from = ""          # the stage that produced `form`, for the hint
    facts: set[str] = set()
    chain_ok = True
    for index, name in enumerate(pipeline):
        where = f"pipeline[{index}]"
        spec = registry.get(name)
        if spec is None:
            problems.append(Problem(where, name, "a registered stage: " + ", ".join(sorted(registry)),
                                    did_you_mean(name, registry)))
            chain_ok = False
            continue
        if name in pipeline[:index]:
            problems.append(Problem(where, name, "each stage at most once", "remove the repeated entry"))
        path = spec.config_keys[0] if len(spec.config_keys) == 1 else ""
        config = build_config(spec.config_cls, spec.config_data(cfg), path, problems)
        if config is None:
            chain_ok = False
            continue
        try:   # a stage's own code must not crash the pre-flight: its failure is one more problem
            stage = spec.stage_cls(config)
        except Exception as error:
            problems.append(_crashed(where, name, "a stage built from its config", error))
            chain_ok = False
            continue
        try:
            problems.extend(stage.preflight(env))
        except Exception as error:
            problems.append(_crashed(where, name, "a pre-flight check that completes", error))
        if not chain_ok:
            continue
        accepted = stage.consumes()
        if not accepted and index > 0:
            problems.append(Problem(where, name, "a source stage only as the first stage",
                                    f"move '{name}' to the start of the pipeline"))
        elif accepted and form is None:
            problems.append(Problem(where, name, "a pipeline that starts with a source stage",
                                    "start the pipeline with a stage that consumes nothing, e.g. load"))
            chain_ok = False
            continue
        elif accepted and form not in accepted:
            reason = getattr(stage, "refusal", lambda given: None)(form)
            move = f"place '{name}' before '{form_from}'"
            if form_from == pipeline[0]:   # the loaded model itself: reordering cannot help
                fix = reason or move
            else:
                fix = f"{reason}; or {move}" if reason else move
            problems.append(Problem(where, name, f"'{name}' after a stage producing "
                                    + " or ".join(sorted(map(str, accepted))),
                                    f"'{form_from}' hands on the model as '{form}'; {fix}"))
        missing = stage.requires - facts
        if missing:
            providers = sorted(s for s, sp in registry.items() if missing & sp.stage_cls.provides)
            problems.append(Problem(where, name, f"'{name}' after a stage that provides "
                                    + ", ".join(sorted(missing)),
                                    f"add {' or '.join(map(repr, providers))} before '{name}'"))
        new_form = stage.produces(form)
        if new_form != form:
            form_from = name
        notes: list[Note] = []
        try:
            notes = list(getattr(stage, "explain", lambda env: [])(env))
        except Exception as error:
            problems.append(_crashed(where, name, "a plan note that completes", error))
        planned.append(PlannedStage(spec, config, stage, form, new_form, tuple(notes)))
        form = new_form
        facts |= stage.provides
    return planned


def _crashed(where: str, name: str, expected: str, error: Exception) -> Problem:
    return Problem(where, name, expected, f"stage '{name}' raised {type(error).__name__}: {first_line(error)}")


def unique(problems: list[Problem]) -> list[Problem]:
    seen: dict[str, Problem] = {}
    for problem in problems:
        seen.setdefault(problem.render(), problem)
    return list(seen.values())
