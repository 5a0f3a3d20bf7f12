"""Every config in conf/ composes and compiles; every stage config round-trips."""
from __future__ import annotations

from pathlib import Path

import pytest

from ptflow.app.args import CONFIG_DIR
from ptflow.app.overrides import option_groups
from ptflow.app.settings import compile_plan
from ptflow.core import typed
from ptflow.core.errors import ConfigError
from ptflow.core.stage import load_stages
from tests.conftest import compose

GPU_RECIPES = {"int4_weight_only", "float8_dynamic"}
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
    if group == "quantize" and option in GPU_RECIPES:   # on the cpu device: refused, naming why
        with pytest.raises(ConfigError, match="quantize.method.*needs device=cuda"):
            compile_plan(config, choices)
        return
    if group == "compile" and option.startswith("torchscript"):   # TorchScript takes no torchao model
        config, choices = compose(f"{group}={option}", "quantize=none", "experiment=latency_only")
    if (group, option) == ("compile", "onnxruntime"):   # torch.onnx cannot convert torchao's int8 default
        with pytest.raises(ConfigError, match="compile.backend.*cannot convert torchao"):
            compile_plan(config, choices)
        config, choices = compose(f"{group}={option}", "quantize=none")
    if (group, option) == ("compile", "cudagraphs"):
        with pytest.raises(ConfigError, match="compile.backend.*needs device=cuda"):
            compile_plan(config, choices)
        return
    if (group, option) == ("quantize", "legacy_dynamic"):   # packed params cannot be torch.exported
        with pytest.raises(ConfigError, match="found 'export'.*'packed'"):
            compile_plan(config, choices)
        config, choices = compose(f"{group}={option}", "experiment=latency_only")
    plan = compile_plan(config, choices)
    assert plan.stages and choices[group] == option


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_yaml_opens_with_the_command_that_uses_it(path: Path):
    comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert comments and any(line.startswith("# ptflow") for line in comments[:2]), path


def _schema_fields(group: str) -> set[str] | None:
    """The fields of the typed config a group's yaml fills, or None if none is known."""
    import dataclasses
    import typing

    from ptflow.app.settings import RunSettings

    for spec in load_stages().values():
        if group in spec.config_keys:
            cls = spec.config_cls if len(spec.config_keys) == 1 else typing.get_type_hints(spec.config_cls)[group]
            return {f.name for f in dataclasses.fields(cls)}
    hint = typing.get_type_hints(RunSettings).get(group)
    return {f.name for f in dataclasses.fields(hint)} if dataclasses.is_dataclass(hint) else None


@pytest.mark.parametrize("group, option", [o for o in OPTIONS if o != ("tracking", "none")],
                         ids=[f"{g}={o}" for g, o in OPTIONS if (g, o) != ("tracking", "none")])
def test_every_yaml_lists_every_field_of_its_schema(group, option):
    """A readable config shows every knob; and every `group.key=value` override then composes
    in Hydra as it is (tracking=none is the exception: it turns tracking off, nothing else)."""
    fields = _schema_fields(group)
    if fields is None:
        pytest.skip(f"{group} is an overlay, not a schema")
    config, _ = compose(f"{group}={option}")
    assert fields - set(config[group]) == set(), f"conf/{group}/{option}.yaml omits these fields"


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
