"""A small CNN on the digits as 1-channel 8x8 images: conv, batch norm and pooling to quantize.

The weights in ``digits_cnn.safetensors`` come from ``python -m ptflow.zoo.training digits_cnn``;
the inputs come from ``ptflow.zoo.digits.digits_images``.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # bias=False: the batch norm that follows has its own shift (and folds into the conv).
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class DigitsCNN(nn.Module):
    """(B, 1, 8, 8) pixels in [0, 1] -> 10 class logits; three conv blocks, ~56k parameters."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(1, width), _conv_block(width, 2 * width), nn.MaxPool2d(2),   # 8x8 -> 4x4
            _conv_block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
