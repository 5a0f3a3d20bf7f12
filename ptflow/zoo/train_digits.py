"""Train the bundled digits MLP deterministically and write its safetensors weights.

    python -m ptflow.zoo.train_digits            # rewrites ptflow/zoo/digits_mlp.safetensors
    python -m ptflow.zoo.train_digits --out /tmp/w.safetensors --epochs 3
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ptflow.zoo.digits import DigitsMLP, digits_split

DEFAULT_OUT = Path(__file__).with_name("digits_mlp.safetensors")


def train(epochs: int = 30, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> tuple[DigitsMLP, float]:
    """Adam on the train split; returns the model (eval mode) and its held-out accuracy."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-identical weights on any machine
    try:
        train_split, test_split = digits_split("train", seed=seed), digits_split("test", seed=seed)
        model = DigitsMLP()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
        generator = torch.Generator().manual_seed(seed)
        x, y = train_split.inputs, train_split.targets
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                index = order[start:start + batch_size]
                loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.inference_mode():
            predicted = model(test_split.inputs).argmax(-1)
        return model, float((predicted == test_split.targets).float().mean())
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    model, accuracy = train(epochs=args.epochs, seed=args.seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata={"heldout_accuracy": f"{accuracy:.4f}",
                                              "epochs": str(args.epochs), "seed": str(args.seed)})
    print(f"held-out accuracy {accuracy:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
