"""The bundled CNN and transformer: their shipped weights, configs and data agree, and they
export, run channels_last, honour the mask and retrain deterministically."""
from __future__ import annotations

import re

import pytest
import torch

from ptflow.app.args import CONFIG_DIR
from ptflow.core.spec import ModelInputs, call
from ptflow.core.targets import instantiate, resolve_path
from ptflow.zoo import training
from ptflow.zoo.digits import digits_images, digits_rows, digits_split
from tests.conftest import compose

MODELS = ["digits_cnn", "digits_transformer"]


def _stated_accuracy(model: str) -> float:
    """The threshold the model's yaml header promises ("tests assert >= X"), so they can't drift."""
    found = re.search(r"tests assert >= ([0-9.]+)", (CONFIG_DIR / "model" / f"{model}.yaml").read_text())
    assert found, f"conf/model/{model}.yaml states no 'tests assert >= X' accuracy"
    return float(found.group(1))


def _bundled(model: str):
    """The model (eval mode, shipped weights loaded strictly) and the held-out split, both
    built from what `ptflow experiment=<model>` composes."""
    from safetensors.torch import load_file

    config, _ = compose(f"experiment={model}")
    network = instantiate(config["model"]["builder"])
    assert config["model"]["strict"]
    network.load_state_dict(load_file(resolve_path(config["model"]["weights"])), strict=True)
    return network.eval(), instantiate(config["data"]["source"])


@pytest.fixture(scope="module", params=MODELS)
def bundled(request):
    return request.param, *_bundled(request.param)


def test_shipped_weights_reach_the_stated_held_out_accuracy(bundled):
    from safetensors import safe_open

    name, network, held_out = bundled
    accuracy = training.accuracy(network, held_out)
    assert len(held_out.targets) == 450
    assert accuracy >= _stated_accuracy(name)
    config, _ = compose(f"experiment={name}")
    with safe_open(str(resolve_path(config["model"]["weights"])), "pt") as handle:
        assert abs(float(handle.metadata()["heldout_accuracy"]) - accuracy) < 1e-4


def test_exports_with_a_dynamic_batch(bundled):
    _, network, held_out = bundled
    inputs = ModelInputs.of(held_out.inputs)
    batch = torch.export.Dim("batch")
    four, seven = inputs.map(lambda t: t[:4]), inputs.map(lambda t: t[:7])
    dims = {name: {0: batch} for name, _ in four.named()}
    if four.kwargs:
        program = torch.export.export(network, (), dict(four.kwargs), dynamic_shapes=dims, strict=False)
    else:
        program = torch.export.export(network, four.args, dynamic_shapes=(dims["arg0"],), strict=False)
    with torch.inference_mode():
        assert torch.allclose(call(program.module(), seven), call(network, seven), atol=1e-5)


def test_cnn_gives_the_same_outputs_in_channels_last():
    network, held_out = _bundled("digits_cnn")
    with torch.inference_mode():
        expected = network(held_out.inputs)
        network = network.to(memory_format=torch.channels_last)
        actual = network(held_out.inputs.to(memory_format=torch.channels_last))
    assert torch.allclose(actual, expected, atol=1e-5)


def test_transformer_mask_drops_tokens_as_if_they_were_absent():
    network, held_out = _bundled("digits_transformer")
    rows, mask = held_out.inputs["rows"][:16], held_out.inputs["mask"][:16]
    padded = mask.clone()
    padded[:, 6:] = 0
    with torch.inference_mode():
        full, masked = network(rows=rows, mask=mask), network(rows=rows, mask=padded)
        truncated = network(rows=rows[:, :6], mask=mask[:, :6])
        all_padding = network(rows=rows, mask=torch.zeros_like(mask))
    assert (full - masked).abs().max() > 1e-2
    assert torch.allclose(masked, truncated, atol=1e-5)
    assert torch.isfinite(all_padding).all()


def test_splits_are_disjoint_and_shaped_for_each_model():
    train, test = digits_split("train"), digits_split("test")
    seen = {row.numpy().tobytes() for row in train.inputs}
    assert not any(row.numpy().tobytes() in seen for row in test.inputs)
    for split, flat in (("train", train), ("test", test)):
        images, rows = digits_images(split), digits_rows(split)
        assert images.inputs.shape == (len(flat.inputs), 1, 8, 8)
        assert rows.inputs["rows"].shape == (len(flat.inputs), 8, 8)
        assert torch.equal(rows.inputs["mask"], torch.ones(len(flat.inputs), 8))
        assert torch.equal(images.inputs.flatten(1), flat.inputs)
        assert torch.equal(rows.inputs["rows"].flatten(1), flat.inputs)
        assert torch.equal(images.targets, flat.targets) and torch.equal(rows.targets, flat.targets)


@pytest.mark.slow
def test_cnn_retrains_to_byte_identical_weights(tmp_path):
    for name in ("first", "second"):
        training.main(["digits_cnn", "--epochs", "1", "--out", str(tmp_path / f"{name}.safetensors")])
    assert (tmp_path / "first.safetensors").read_bytes() == (tmp_path / "second.safetensors").read_bytes()
