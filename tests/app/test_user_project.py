"""A user's own modules: the working directory is importable, as `python -m` makes it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest



# --- the working directory is importable ---------------------------------------------------

USER_MODULE = '''
import torch
from torch import nn
from ptflow.inputs.data import Split

class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.layer = nn.Linear(4, width)

    def forward(self, x):
        return self.layer(x)

def rows(count: int = 32):
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randn(count, 4, generator=generator), None)
'''

USER_STAGES = '''
from dataclasses import dataclass
from ptflow.core.artifact import RUNNABLE
from ptflow.core.stage import register_stage

@dataclass(frozen=True)
class MarkConfig:
    value: int = 7

@register_stage("mark", config=MarkConfig)
class MarkStage:
    """A user's own stage."""
    requires = frozenset()
    provides = frozenset()
    def __init__(self, config): self.config = config
    def consumes(self): return RUNNABLE
    def produces(self, given): return given
    def preflight(self, env): return []
    def run(self, artifact, ctx): return artifact.with_metrics({"mark.value": float(self.config.value)})
'''


def _user_project(root: Path) -> None:
    (root / "mymodels.py").write_text(USER_MODULE)
    (root / "my_stages.py").write_text(USER_STAGES)
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "data").mkdir()
    (root / "conf" / "model" / "mine.yaml").write_text(textwrap.dedent('''\
        # ptflow model=mine
        builder: {_target_: mymodels.Net, width: 8}
        weights: null
        format: auto
        strict: true
        state_dict_key: null
        trust_pickle: false
        output_key: null
    '''))
    (root / "conf" / "data" / "mine.yaml").write_text(textwrap.dedent('''\
        # ptflow data=mine
        source: {_target_: mymodels.rows, count: 32}
        calibration: null
        batch_size: 16
        max_batches: null
        metric: null
        dynamic_batch: true
    '''))


def _ptflow(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed `ptflow` script, as a user runs it: unlike `python -m ptflow`, Python
    itself puts no working directory on sys.path."""
    script = Path(sys.executable).parent / "ptflow"
    if not script.exists():
        pytest.skip(f"no installed ptflow script beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env, "PYTHONUNBUFFERED": "1"})


def _user_args(root: Path) -> list[str]:
    return [f"hydra.searchpath=[file://{root / 'conf'}]", "model=mine", "data=mine", "plugins=[my_stages]",
            "pipeline=[load,validate,benchmark,mark]", "tracking=none", "benchmark=quick"]


def test_modules_in_the_working_directory_import_without_pythonpath(tmp_path):
    _user_project(tmp_path)
    result = _ptflow(tmp_path, *_user_args(tmp_path))
    assert result.returncode == 0, result.stderr
    (record,) = tmp_path.glob("outputs/runs/*/*/ptflow_result.json")
    assert json.loads(record.read_text())["metrics"]["mark.value"] == 7.0


def test_a_module_nowhere_to_be_found_says_where_ptflow_looked(tmp_path):
    _user_project(tmp_path)
    result = _ptflow(tmp_path, *_user_args(tmp_path), "model.builder._target_=mymodel.Net")
    assert result.returncode == 2
    assert "model.builder._target_" in result.stderr and f"a module in {tmp_path}" in result.stderr


@pytest.mark.slow
def test_joblib_workers_import_the_users_modules(tmp_path):
    _user_project(tmp_path)
    result = _ptflow(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
                     *_user_args(tmp_path))
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/multirun/*/*/*/ptflow_result.json")]
    assert [r["status"] for r in records] == ["FINISHED", "FINISHED"]


def test_a_module_hiding_an_installed_one_is_named(tmp_path):
    from ptflow.app.cli import _shadowed_by

    (tmp_path / "json.py").write_text("")
    (tmp_path / "mymodels.py").write_text("")
    lines = _shadowed_by(str(tmp_path))
    assert len(lines) == 1 and "./json.py hides the installed module 'json'" in lines[0]
