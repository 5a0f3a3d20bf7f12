"""Shared pieces of the tests of users' own models and data: a tiny model, random-input
data, and in-process runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.errors import ConfigError
from ptflow.core.stage import RunContext
from tests.conftest import compose

QUICK = ("tracking=none", "benchmark=quick", "quantize=none")
PIXELS = {"_target_": "ptflow.inputs.datasources.random_inputs", "rows": 40, "seed": 0,
          "inputs": {"pixels": {"shape": [8], "dtype": "float32"}}}


class Tiny(nn.Module):
    """8 features -> 3 class scores, named like the digits MLP's input."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def _config(*overrides: str, model: dict | None = None, data: dict | None = None):
    config, choices = compose(*QUICK, *overrides)
    config["model"].update(model or {})
    config["data"].update({"source": PIXELS, "calibration": None, "metric": None, "batch_size": 16,
                           **(data or {})})
    return config, choices


def _problems(config, choices=None):
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    return caught.value.problems


def _run(tmp_path: Path, config, choices):
    plan = compile_plan(config, choices)
    heard: dict[str, str] = {}
    ctx = RunContext(tmp_path, "cpu", 0, "0" * 64, {}, engine.progress,
                     warn=lambda key, message: heard.setdefault(key, message))
    return engine.run(plan, ctx), heard


def _scripted(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    return path


def _program(tmp_path: Path) -> Path:
    model = Tiny().eval()
    example = torch.randn(4, 8)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    return path
