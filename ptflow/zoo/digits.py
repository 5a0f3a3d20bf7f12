"""The bundled default: a Linear-heavy MLP on scikit-learn's digits (shipped with sklearn).

The weights in ``digits_mlp.safetensors`` come from ``python -m ptflow.zoo.train_digits``.
The same split, shaped for the other bundled models: ``digits_images`` (B, 1, 8, 8) for
the CNN, ``digits_rows`` ({"rows": (B, 8, 8), "mask": (B, 8)}) for the transformer.
"""
from __future__ import annotations

import torch
from torch import nn

from ptflow.inputs.data import Split


class DigitsMLP(nn.Module):
    """8x8 digit images (64 pixels in [0, 1]) -> 10 class logits."""

    def __init__(self, in_features: int = 64, hidden: int = 1024, depth: int = 3, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def digits_split(split: str = "test", test_size: float = 0.25, seed: int = 0) -> Split:
    """A stratified train/held-out split of the 1797 digits; pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features / 16.0, labels, test_size=test_size, random_state=seed, stratify=labels)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))


def digits_images(split: str = "test", test_size: float = 0.25, seed: int = 0) -> Split:
    """``digits_split`` as 1-channel 8x8 images: inputs (N, 1, 8, 8), the same rows and order."""
    flat = digits_split(split, test_size, seed)
    return Split(flat.inputs.reshape(-1, 1, 8, 8), flat.targets)


def digits_rows(split: str = "test", test_size: float = 0.25, seed: int = 0) -> Split:
    """``digits_split`` as token sequences, passed by name: {"rows": (N, 8, 8) -- 8 tokens of
    8 pixels, "mask": (N, 8) float, 1 = a real token (all real for digits)}."""
    flat = digits_split(split, test_size, seed)
    rows = flat.inputs.reshape(-1, 8, 8)
    return Split({"rows": rows, "mask": torch.ones(rows.shape[:2])}, flat.targets)
