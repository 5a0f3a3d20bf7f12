"""The design's import rules and the CLI's start-up promise."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def _sources(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def test_the_engine_never_imports_stages_by_name():
    pattern = re.compile(r"^\s*(from|import)\s+(ptflow\.)?stages\b", re.MULTILINE)
    assert [p.name for p in _sources("ptflow") if pattern.search(p.read_text())] == []


def test_stages_never_see_omegaconf_or_hydra():
    pattern = re.compile(r"^\s*(from|import)\s+(omegaconf|hydra)\b", re.MULTILINE)
    assert [p.name for p in _sources("stages") if pattern.search(p.read_text())] == []


def test_help_does_not_import_torch_or_mlflow():
    code = ("import sys; from ptflow.cli import run; run(['--help']); "
            "print(sorted(m for m in ('torch', 'mlflow', 'torchao') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")
    assert "quantize" in out and "int8_dynamic" in out
