"""Shared fixtures: run the real `ptflow` command in a temp dir and read its MLflow record."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# One inductor cache for the whole test session, shared with the ptflow subprocesses (each run
# would otherwise compile cold into its own outputs/cache/inductor). ptflow keeps a cache dir
# the user set; tests of its own default unset this variable.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "ptflow-test-inductor-cache"))


@pytest.fixture(autouse=True, scope="session")
def _own_tracking_store():
    """A developer's MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME must not send test runs
    to their own store (ptflow honours both)."""
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME") if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="module")
def _test_recipes_stay_in_their_module():
    """A recipe a test module registers in-process (tests.scramble_recipe as a plugin) is removed
    after that module, with its module, so registry-wide tests see ptflow's recipes only and a
    later module's `plugins` import registers it again."""
    yield
    from ptflow.stages.quantize.registry import _RECIPES

    for name, recipe in list(_RECIPES.items()):
        module = getattr(recipe.apply, "__module__", "") or ""
        if module.startswith("tests."):
            del _RECIPES[name]
            sys.modules.pop(module, None)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def outputs(self) -> Path:
        return self.cwd / "outputs"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.outputs / 'mlflow.db'}"


def run_cli(cwd: Path, *args: str, timeout: int = 600) -> CliResult:
    """`ptflow ARGS` as a user runs it, from `cwd` (so outputs/ lands there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "ptflow", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, cwd)


# For tests that are not about timing stability: the verdict pinned to stable, so that a busy
# machine (load 4-9 on 2 cores) does not flag their runs invalid and fail them (issue 20)
STEADY = ("benchmark.max_dispersion=1e6", "benchmark.invalid_dispersion=1e6")


@pytest.fixture
def ptflow(tmp_path):
    return lambda *args, **kw: run_cli(tmp_path, *args, **kw)


def mlflow_runs(result: CliResult, experiment: str = "ptflow", parents: bool = False):
    """Every run of `experiment` in the result's store (MLflow Run objects); a sweep's parent
    run only with `parents=True` (the job runs are what most tests look at)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id])
    return runs if parents else [r for r in runs if r.data.tags.get("ptflow.sweep_parent") != "true"]


def compose(*overrides: str) -> tuple[dict, dict]:
    """The resolved config (no hydra node) and group choices, as Hydra composes them for a job."""
    from ptflow.app.args import CONFIG_DIR
    from ptflow.app.overrides import Source, compose_config

    return compose_config(Source(CONFIG_DIR), list(overrides), resolve=True)


def make_context(run_dir: Path, plan):
    """A RunContext like the job runner's, for running plans in-process."""
    from ptflow.core import engine
    from ptflow.core.stage import RunContext
    from ptflow.measure import device

    return RunContext(run_dir, plan.settings.device.name, plan.settings.seed, "0" * 64,
                      device.capture(plan.settings.device), engine.progress)
from tests.mlflow_server import server  # noqa: E402,F401 (a real mlflow server for the tests that ask for one)
