"""The bundled model: really trained, and its training script is deterministic."""
from __future__ import annotations

import torch

from ptflow.core.targets import resolve_path
from ptflow.zoo.digits import DigitsMLP, digits_split
from ptflow.zoo.train_digits import main, train


def test_bundled_weights_reach_the_documented_accuracy():
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = resolve_path("pkg://ptflow.zoo/digits_mlp.safetensors")
    model = DigitsMLP()
    model.load_state_dict(load_file(path))
    held_out = digits_split("test")
    with torch.inference_mode():
        accuracy = float((model.eval()(held_out.inputs).argmax(-1) == held_out.targets).float().mean())
    assert accuracy > 0.97
    with safe_open(str(path), "pt") as handle:
        assert abs(float(handle.metadata()["heldout_accuracy"]) - accuracy) < 1e-4


def test_splits_are_disjoint_stratified_and_sized():
    train_split, test_split = digits_split("train"), digits_split("test")
    assert len(train_split.inputs) + len(test_split.inputs) == 1797 and len(test_split.inputs) == 450
    assert 0.0 <= float(test_split.inputs.min()) and float(test_split.inputs.max()) <= 1.0
    assert torch.bincount(test_split.targets).min() >= 43   # stratified: ~45 per class


def test_training_is_deterministic(tmp_path):
    first, accuracy = train(epochs=1)
    second, _ = train(epochs=1)
    assert accuracy > 0.8
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    main(["--epochs", "1", "--out", str(tmp_path / "w.safetensors")])
    assert (tmp_path / "w.safetensors").stat().st_size > 8_000_000
