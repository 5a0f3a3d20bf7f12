"""Train a bundled digits model deterministically and write its safetensors weights.

    python -m ptflow.zoo.training digits_cnn           # rewrites ptflow/zoo/digits_cnn.safetensors
    python -m ptflow.zoo.training digits_transformer   # rewrites ptflow/zoo/digits_transformer.safetensors
    python -m ptflow.zoo.training digits_mlp           # = python -m ptflow.zoo.train_digits
    python -m ptflow.zoo.training digits_cnn --out /tmp/w.safetensors --epochs 3

One thread, torch.use_deterministic_algorithms and fixed seeds make the weights file
byte-identical from run to run on one machine (other CPUs' kernels may round differently).
"""
from __future__ import annotations

import argparse
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptflow.core.spec import ModelInputs, call
from ptflow.inputs.data import Split
from ptflow.zoo.digits import DigitsMLP, digits_images, digits_rows, digits_split
from ptflow.zoo.digits_cnn import DigitsCNN
from ptflow.zoo.digits_transformer import DigitsTransformer

ZOO = Path(__file__).parent


@dataclass(frozen=True)
class Recipe:
    """How one bundled model is trained: its architecture, its data and Adam's settings."""

    build: Callable[[], nn.Module]        # called after seeding, so initial weights are fixed too
    data: Callable[..., Split]            # data(split="train"|"test", seed=...) -> Split
    out: Path                             # the weights file that ships in ptflow/zoo
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 64


# Keyed like conf/model/<name>.yaml, whose `weights:` is pkg://ptflow.zoo/<name>.safetensors.
RECIPES = {
    "digits_mlp": Recipe(DigitsMLP, digits_split, ZOO / "digits_mlp.safetensors", epochs=30),
    "digits_cnn": Recipe(DigitsCNN, digits_images, ZOO / "digits_cnn.safetensors", epochs=20),
    "digits_transformer": Recipe(DigitsTransformer, digits_rows, ZOO / "digits_transformer.safetensors", epochs=30),
}


def accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on a whole split."""
    model.eval()
    with torch.inference_mode():
        predicted = call(model, ModelInputs.of(split.inputs)).argmax(-1)
    return float((predicted == split.targets).float().mean())


def train(recipe: Recipe, epochs: int | None = None, seed: int = 0) -> tuple[nn.Module, float]:
    """Adam on the train split; returns the model (eval mode) and its held-out accuracy."""
    epochs = recipe.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: no reduction whose order depends on the core count
    try:
        train_split, test_split = recipe.data("train", seed=seed), recipe.data("test", seed=seed)
        model = recipe.build()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        inputs, targets = ModelInputs.of(train_split.inputs), train_split.targets
        count = len(targets)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(count, generator=generator)
            for start in range(0, count, recipe.batch_size):
                index = order[start:start + recipe.batch_size]
                logits = call(model, inputs.map(lambda t: t[index]))
                loss = torch.nn.functional.cross_entropy(logits, targets[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return model, accuracy(model, test_split)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ptflow.zoo.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, default=None, help="default: the bundled file in ptflow/zoo")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    recipe = RECIPES[args.model]
    out = recipe.out if args.out is None else args.out
    epochs = recipe.epochs if args.epochs is None else args.epochs
    model, held_out = train(recipe, epochs=epochs, seed=args.seed)
    save_weights(model, out, {"heldout_accuracy": f"{held_out:.4f}", "epochs": str(epochs), "seed": str(args.seed)})
    print(f"held-out accuracy {held_out:.4f}; wrote {out}")


def save_weights(model: nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """Write the state_dict as safetensors, byte for byte the same for the same weights."""
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    Path(out).write_bytes(_sorted_metadata(save(state, metadata=metadata)))


def _sorted_metadata(blob: bytes) -> bytes:
    """safetensors (0.8) writes ``__metadata__`` in a random order per process; sort its keys.

    The header is 8 bytes of little-endian length, then JSON padded with spaces to a multiple
    of 8; tensor offsets count from the end of the header, so rewriting it moves no data.
    """
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + length:]


if __name__ == "__main__":
    main()
