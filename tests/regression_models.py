"""A regressor and its data, for the regression metrics (data.metric=mse): the targets are the
model's own prediction plus noise, so the baseline's error is the noise's, and a model whose
last layer is zeroed (tests.scramble_recipe) errs by the signal it lost."""
from __future__ import annotations

import torch
from torch import nn

from ptflow.inputs.data import Split

WEIGHT = (0.03, -0.02, 0.04, 0.01)   # small: every error stays far below 0.01 in absolute terms
BIAS = 0.05


class Regressor(nn.Module):
    """4 features -> one value per example, shaped (batch, 1), with fixed weights."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(len(WEIGHT), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([WEIGHT]))
            self.head.bias.fill_(BIAS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def regression_split(rows: int = 96, seed: int = 0, noise: float = 0.05) -> Split:
    """Standard-normal features; float targets shaped (rows,): the Regressor's prediction + noise."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, len(WEIGHT), generator=generator)
    clean = features @ torch.tensor(WEIGHT) + BIAS
    return Split(features, clean + noise * torch.randn(rows, generator=generator))
