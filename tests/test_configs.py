"""Every config in conf/ composes and compiles; every stage config round-trips."""
from __future__ import annotations

from pathlib import Path

import pytest

from ptflow import typed
from ptflow.cli import CONFIG_DIR
from ptflow.errors import ConfigError
from ptflow.plan import compile_plan
from ptflow.preflight import option_groups
from ptflow.stage import load_stages
from tests.conftest import compose

OPTIONS = sorted((group, option) for group, options in option_groups([CONFIG_DIR]).items()
                 for option in options)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_compiles(group, option):
    import torch

    config, choices = compose(f"{group}={option}")
    if group == "device" and option == "cuda" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device.type"):
            compile_plan(config, choices)
        return
    plan = compile_plan(config, choices)
    assert plan.stages and choices[group] == option


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_yaml_opens_with_the_command_that_uses_it(path: Path):
    comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert comments and any(line.startswith("# ptflow") for line in comments[:2]), path


def test_every_stage_config_round_trips():
    config, _ = compose("compile=inductor")
    for planned in compile_plan(config).stages:
        plain = typed.to_plain(planned.config)
        assert typed.build(planned.spec.config_cls, plain) == planned.config, planned.name


def test_stage_schemas_are_registered_with_hydra():
    from hydra.core.config_store import ConfigStore

    registry = load_stages()
    stored = ConfigStore.instance().list("ptflow_schema")
    assert {f"{name}.yaml" for name in registry} <= set(stored)
