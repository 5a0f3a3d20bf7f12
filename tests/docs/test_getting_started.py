"""Every shell command on the site's Getting started page runs, in order, as shown.

The page's ```bash blocks are what a new user types from the directory `make run` ran in.
The test gives them such a directory: a fresh temp dir holding the repository's Makefile and
pyproject.toml and a `.venv` whose bin/ and lib/ are this interpreter's virtual environment
(nothing is installed or re-installed). Each command runs in its own `bash`, after the
state-setting commands before it (`source`, `export`, `cd`), and must exit 0 and print what
EXPECTED says. A command without an entry in EXPECTED fails the test: a new command on the
page needs its check here.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "getting-started.md"

# command (as on the page, comment stripped) -> regexes its output must match
EXPECTED: dict[str, list[str]] = {
    "make run": [r"ptflow summary · digits_mlp-int8_dynamic-eager", r"speedup \d+\.\d+x \[", r"MLflow run\s+[0-9a-f]{32}"],
    "source .venv/bin/activate": [],
    "ptflow --version": [r"^ptflow \d+\.\d+\.\d+ \(Hydra "],
    "ptflow --help": [r"usage: ptflow", r"quantize\s+.*int8_weight_only"],
    "ptflow quantize=int8_weight_only benchmark=quick": [r"ptflow summary · digits_mlp-int8_weight_only-eager",
                                                         r"top1_accuracy\s+0\.98"],
    "ptflow dry_run=true quantize=int8_static compile=inductor": [r"Plan: 6 stage\(s\)", r"calibrate: 8 batch",
                                                                  r"dry run: 1 job\(s\) checked, nothing run"],
    "ptflow -m quantize=none,int8_dynamic,bf16 benchmark=quick": [r"sweep: 3/3 job\(s\) .*3 finished, 0 failed",
                                                                  r"ptflow-compare --parent [0-9a-f]{32}"],
    "ptflow-compare --max-accuracy-drop 0.001": [r"best within a drop of 0.001", r"reproduce exactly: ptflow-reproduce"],
    "export MLFLOW_TRACKING_URI=sqlite:///$PWD/outputs/mlflow.db": [],
    "mlflow experiments search": [r"\b1\s+ptflow\b"],
    "mlflow runs list --experiment-id 1": [r"sweep 3 job\(s\)", r"digits_mlp-bf16-eager"],
}
STATE = re.compile(r"^(source|export|cd)\b")


def shell_commands(markdown: str) -> list[str]:
    """The commands of every ```bash block, in page order (continuation lines joined)."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = re.sub(r"\s+#.*$", "", pending + line).strip()
            pending = ""
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def user_checkout(tmp: Path) -> Path:
    """A directory like the one `make run` leaves: Makefile, pyproject.toml, .venv (installed)."""
    venv = Path(sys.prefix)
    shutil.copy(REPO / "Makefile", tmp / "Makefile")
    shutil.copy(REPO / "pyproject.toml", tmp / "pyproject.toml")
    os.utime(tmp / "pyproject.toml", (0, 0))          # older than the install stamp: make installs nothing
    (tmp / ".venv").mkdir()
    for entry in venv.iterdir():
        if not entry.name.startswith(".installed"):
            (tmp / ".venv" / entry.name).symlink_to(entry)
    (tmp / ".venv" / ".installed").touch()
    return tmp


def test_the_page_has_commands_and_each_has_a_check():
    commands = shell_commands(PAGE.read_text())
    assert "make run" in commands and "ptflow --help" in commands, commands
    unchecked = [c for c in commands if c not in EXPECTED]
    assert not unchecked, f"commands on {PAGE.name} without an entry in EXPECTED: {unchecked}"
    assert not any(c.startswith(("make test", "mlflow ui", "mlflow server")) for c in commands), \
        "Getting started must show only commands that end by themselves (the test runs each one)"


@pytest.mark.slow
def test_every_getting_started_command_runs(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("runs the page's commands with this interpreter's virtual environment as .venv; this is none")
    checkout = user_checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PTFLOW_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))   # only `source` puts the venv on PATH
    state: list[str] = []
    for command in shell_commands(PAGE.read_text()):
        script = "set -euo pipefail\n" + "".join(s + "\n" for s in state) + command + "\n"
        done = subprocess.run(["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True,
                              timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-4000:]}"
        for pattern in EXPECTED[command]:
            assert re.search(pattern, output, re.M), f"`{command}` did not print /{pattern}/:\n{output[-4000:]}"
        if STATE.match(command):
            state.append(command)
    assert (checkout / "outputs" / "mlflow.db").is_file()
