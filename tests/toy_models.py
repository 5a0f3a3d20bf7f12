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


class RowsRNN(nn.Module):
    """The digits as 8 rows of 8 pixels (data=digits_rows: `rows` and `mask` by name) through
    an LSTM or GRU, its last hidden state into a Linear head: almost every weight is in the RNN,
    which torchao and PT2E do not quantize."""

    def __init__(self, cell: str = "LSTM", hidden: int = 32, classes: int = 10):
        super().__init__()
        self.rnn = getattr(nn, cell)(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(rows * mask.unsqueeze(-1))
        return self.head(out[:, -1])


def rows_lstm(hidden: int = 32, classes: int = 10) -> RowsRNN:
    return RowsRNN("LSTM", hidden, classes)


def rows_gru(hidden: int = 32, classes: int = 10) -> RowsRNN:
    return RowsRNN("GRU", hidden, classes)


class ResidualCNN(nn.Module):
    """(B, 1, 8, 8) digits images -> 10 logits through one block written like torchvision's
    ResNet BasicBlock (conv-bn-relu, conv-bn, `out += identity`, one ReLU module called twice):
    the module reuse PT2E's X86InductorQuantizer fails on ("Input partition has more than one
    output node"). `shared_relu=False` gives each call its own ReLU, which PT2E quantizes."""

    def __init__(self, width: int = 8, classes: int = 10, shared_relu: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.relu_out = None if shared_relu else nn.ReLU(inplace=True)
        self.head = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        identity = self.stem(images)
        out = self.relu(self.bn1(self.conv1(identity)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out) if self.relu_out is None else self.relu_out(out)
        return self.head(out.mean(dim=(2, 3)))


class TokenBag(nn.Module):
    """`tokens` (B, T) integer ids -> class scores, the mean of their Embedding rows: weights in
    an Embedding only, no Linear and no matmul."""

    def __init__(self, vocab: int = 50, classes: int = 10):
        super().__init__()
        self.table = nn.Embedding(vocab, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table(tokens).mean(dim=1)
