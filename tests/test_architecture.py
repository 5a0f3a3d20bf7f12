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


def test_the_tracking_store_does_not_import_the_plan():
    """plan.py reads TrackingConfig; tracking.py must not need the plan back (no import circle)."""
    pattern = re.compile(r"^\s*(from|import)\s+ptflow\.plan\b|^\s*from\s+ptflow\s+import\s+.*\bplan\b", re.MULTILINE)
    assert not pattern.search((ROOT / "ptflow" / "tracking.py").read_text())


def test_the_command_line_modules_stay_small():
    """Hydra expands and composes; ptflow's command line and pre-flight only check."""
    sizes = {name: len((ROOT / "ptflow" / name).read_text().splitlines()) for name in ("cli.py", "preflight.py")}
    assert all(lines <= 250 for lines in sizes.values()), sizes
