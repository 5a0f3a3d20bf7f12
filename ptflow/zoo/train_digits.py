"""Train the bundled digits MLP deterministically and write its safetensors weights.

    python -m ptflow.zoo.train_digits            # rewrites ptflow/zoo/digits_mlp.safetensors
    python -m ptflow.zoo.train_digits --out /tmp/w.safetensors --epochs 3

(The same as ``python -m ptflow.zoo.training digits_mlp``, which also trains the other models.)
"""
from __future__ import annotations

import dataclasses
import sys

from ptflow.zoo import training
from ptflow.zoo.digits import DigitsMLP

RECIPE = training.RECIPES["digits_mlp"]
DEFAULT_OUT = RECIPE.out


def train(epochs: int = 30, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> tuple[DigitsMLP, float]:
    """Adam on the train split; returns the model (eval mode) and its held-out accuracy."""
    return training.train(dataclasses.replace(RECIPE, lr=lr, batch_size=batch_size), epochs=epochs, seed=seed)


def main(argv: list[str] | None = None) -> None:
    training.main(["digits_mlp", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
