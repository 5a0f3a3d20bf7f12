"""load: safe by default, strict key matching with readable errors."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from ptflow.core.errors import ConfigError, InputError
from ptflow.core.stage import Environment
from ptflow.core.targets import resolve_path
from ptflow.stages.load import DataConfig, LoadConfig, LoadStage, ModelConfig, build_model
from ptflow.zoo.digits import DigitsMLP

BUILDER = {"_target_": "ptflow.zoo.digits.DigitsMLP"}
BUNDLED = resolve_path("pkg://ptflow.zoo/digits_mlp.safetensors")


def _model(weights, **kw) -> torch.nn.Module:
    return build_model(ModelConfig(builder=kw.pop("builder", BUILDER), weights=str(weights), **kw))


def test_safetensors_and_pt_state_dicts_load_the_same_weights(tmp_path):
    state = load_file(BUNDLED)
    torch.save(state, tmp_path / "w.pt")
    from_st, from_pt = _model(BUNDLED), _model(tmp_path / "w.pt")
    for key, value in state.items():
        assert torch.equal(from_st.state_dict()[key], value) and torch.equal(from_pt.state_dict()[key], value)


def test_nested_checkpoint_needs_state_dict_key(tmp_path):
    torch.save({"state_dict": load_file(BUNDLED), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(InputError, match="set model.state_dict_key.*'state_dict'"):
        _model(tmp_path / "ckpt.pt")
    assert isinstance(_model(tmp_path / "ckpt.pt", state_dict_key="state_dict"), DigitsMLP)


def test_full_pickle_is_refused_by_default_and_loads_when_trusted(tmp_path):
    torch.save(DigitsMLP(hidden=8), tmp_path / "full.pt")
    with pytest.raises(InputError, match="trust_pickle=true"):
        _model(tmp_path / "full.pt")
    loaded = build_model(ModelConfig(builder=None, weights=str(tmp_path / "full.pt"), trust_pickle=True))
    assert isinstance(loaded, DigitsMLP) and loaded.net[0].out_features == 8


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_never_runs_by_default(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"net.0.weight": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refuses by default"):
        _model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_shape_mismatch_lists_the_tensors():
    with pytest.raises(InputError, match=r"shape mismatches \(\d\): net.0.weight: file \(1024, 64\) vs model \(32, 64\)"):
        _model(BUNDLED, builder={**BUILDER, "hidden": 32})


def test_extra_keys_load_with_strict_false(tmp_path):
    state = {**load_file(BUNDLED), "extra.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(InputError, match=r"unexpected in the file \(1\): extra.weight"):
        _model(tmp_path / "extra.pt")
    assert isinstance(_model(tmp_path / "extra.pt", strict=False), DigitsMLP)


def test_ddp_prefix_gets_a_hint(tmp_path):
    torch.save({f"module.{k}": v for k, v in load_file(BUNDLED).items()}, tmp_path / "ddp.pt")
    with pytest.raises(InputError, match="DataParallel/DDP"):
        _model(tmp_path / "ddp.pt")


def test_a_model_config_needs_a_builder_unless_the_file_brings_its_architecture():
    with pytest.raises(ConfigError, match="builder"):
        ModelConfig(builder=None, weights=None)
    with pytest.raises(ConfigError, match="builder"):
        ModelConfig(builder=None, weights="x.pt", format="state_dict")


def test_a_state_dict_without_a_builder_is_caught_before_loading():
    """With model.format=auto only the file can say whether it needs a builder."""
    config = LoadConfig(model=ModelConfig(builder=None, weights=str(BUNDLED)),
                        data=DataConfig(source={"_target_": "ptflow.zoo.digits.digits_split"}))
    (problem,) = LoadStage(config).preflight(Environment("cpu"))
    assert problem.key == "model.builder" and "holds a state_dict" in problem.hint


def test_preflight_checks_targets_and_their_arguments():
    from ptflow.inputs.data import Split  # noqa: F401  (the data builder module must import)

    config = LoadConfig(
        model=ModelConfig(builder={"_target_": "ptflow.zoo.digits.DigitsMPL"}, weights=str(BUNDLED)),
        data=__import__("ptflow.stages.load", fromlist=["DataConfig"]).DataConfig(
            source={"_target_": "ptflow.zoo.digits.digits_split", "splitt": "test"}))
    rendered = [p.render() for p in LoadStage(config).preflight(Environment("cpu"))]
    assert any("did you mean 'DigitsMLP'" in r for r in rendered)
    assert any("data.source.splitt" in r and "did you mean 'split'" in r for r in rendered)


@pytest.mark.parametrize("fields, key", [
    ({"builder": BUILDER, "weights": "m.pt", "format": "torchscript"}, "builder"),
    ({"builder": None, "weights": None, "format": "pt2"}, "weights"),
    ({"builder": None, "weights": "m.pt", "format": "pickle"}, "trust_pickle"),
    ({"builder": None, "weights": "m.safetensors", "format": "torchscript"}, "format"),
    ({"builder": BUILDER, "weights": "m.pt", "format": "jit"}, "format"),
], ids=["builder-with-torchscript", "pt2-without-file", "pickle-untrusted", "safetensors-as-jit", "unknown"])
def test_model_format_combinations_that_cannot_work(fields, key):
    with pytest.raises(ConfigError) as caught:
        ModelConfig(**fields)
    assert caught.value.problems[0].key == key
