"""Small models and data for in-process tests: keyword inputs and structured outputs,
the calling convention of Hugging Face models."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptflow.inputs.data import Split


@dataclass
class ToyOutput:
    logits: torch.Tensor
    hidden: torch.Tensor


class KeywordNet(nn.Module):
    """(features, mask) by name -> ToyOutput(logits, hidden)."""

    def __init__(self, width: int = 16, classes: int = 3):
        super().__init__()
        self.encode = nn.Linear(8, width)
        self.head = nn.Linear(width, classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> ToyOutput:
        hidden = torch.relu(self.encode(features * mask))
        return ToyOutput(logits=self.head(hidden), hidden=hidden)


def keyword_split(rows: int = 40, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, 8, generator=generator)
    mask = torch.ones(rows, 8)
    targets = (features[:, 0] > 0).long() + (features[:, 1] > 1).long()
    return Split({"features": features, "mask": mask}, targets)


# Data builders whose targets the task metric (top1_accuracy) cannot score: for the CLI
# fault tests, e.g. data.source._target_=tests.toy_models.digits_float_targets.
def digits_float_targets(**kwargs) -> Split:
    """The bundled digits with float labels (a regression-style target)."""
    from ptflow.zoo.digits import digits_split

    split = digits_split(**kwargs)
    return Split(split.inputs, split.targets.float())


def digits_shifted_labels(**kwargs) -> Split:
    """The bundled digits labelled 1..10 (off by one) for a 10-class model."""
    from ptflow.zoo.digits import digits_split

    split = digits_split(**kwargs)
    return Split(split.inputs, split.targets + 1)


class BranchyNet(nn.Module):
    """An MLP over the digits' 64 pixels whose forward branches on its input's values (data-dependent
    control flow: torch.jit.trace records one side of the `if`)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.sum() > 0:   # BRANCH: the line the refusal names
            return self.head(pixels)
        return -self.head(pixels)
