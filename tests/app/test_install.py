"""A built wheel installed into a fresh venv gives a working `ptflow`, from any directory."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "outputs", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".whl")


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)     # a build in place would leave build/ behind
    isolated = int(metadata.version("setuptools").split(".")[0]) < 68
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                    *([] if isolated else ["--no-build-isolation"]), str(source)], check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("ptflow-*.whl")
    return wheel


def test_a_built_wheel_works_from_any_directory(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, hydra, mlflow ...) come from this test's own environment; ptflow
    # itself only from the wheel: the fresh venv's dist-info wins over the editable install
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    installed = sorted(p.name for p in site.iterdir() if not p.name.startswith(("_", ".")))
    assert installed == ["ptflow", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"]
    assert (site / "ptflow" / "conf" / "config.yaml").is_file() and (site / "ptflow" / "stages" / "load.py").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def ptflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "ptflow", *args], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    version = ptflow("--version")
    assert version.returncode == 0 and version.stdout.startswith(f"ptflow {metadata.version('ptflow')}")
    dry = ptflow("dry_run=true")
    assert dry.returncode == 0, dry.stderr
    assert "Plan: 6 stage(s)" in dry.stdout and str(site / "ptflow" / "conf") in ptflow("--help").stdout
    where = subprocess.run([venv / "bin" / "python", "-c", "import ptflow.stages.load as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere)
    assert where.stdout.startswith(str(site))
