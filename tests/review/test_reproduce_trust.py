"""A config from a tracking store is untrusted input: ptflow-reproduce shows every `_target_`
and plugin it would run and refuses, before anything runs, what is outside the allowlist.

The judge is tested on configs; the command on a store whose config.yaml an attacker
rewrote (the artifact overwritten in place), with a marker file as the payload's evidence.
The same attack through a real `mlflow server`'s REST API is in test_store_attacker.py."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ptflow.review.reproduce_trust import PTFLOW_BUILDERS, judge_config, judge_name, user_patterns
from tests.conftest import compose, mlflow_runs, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _verdicts(config, patterns=(), trust_pickle=False):
    return {j.key: j for j in judge_config(config, list(patterns), trust_pickle)}


def test_every_shipped_config_is_allowed_as_it_is():
    for extra in ((), ("experiment=digits_cnn",), ("experiment=digits_transformer",), ("data=random",)):
        config, _ = compose(*extra)
        judged = judge_config(config, [], False)
        assert judged and all(j.allowed for j in judged), [j for j in judged if not j.allowed]


@pytest.mark.parametrize(("target", "extra", "why"), [
    ("torch.load", {"f": "x.pt", "weights_only": False}, "weights_only=False"),
    ("ptflow.core.files.write_atomic", {"path": "x", "data": "y"}, "not a builder"),
    ("ptflow.zoo.training.save_weights", {}, "not a builder"),
    ("os.system", {"command": "true"}, "module 'os'"),
    ("subprocess.run", {}, "module 'subprocess'"),
    ("builtins.exec", {}, "module 'builtins'"),
    ("importlib.import_module", {}, "module 'importlib'"),
    ("shutil.rmtree", {}, "module 'shutil'"),
    ("pickle.loads", {}, "module 'pickle'"),
    ("torch.export.load", {}, "native code"),
    ("transformers.AutoModel.from_pretrained", {"trust_remote_code": True}, "trust_remote_code=True"),
    ("numpy.load", {"allow_pickle": True}, "allow_pickle=True"),
])
def test_dangerous_targets_are_never_allowed_whatever_the_patterns(target, extra, why):
    config, _ = compose()
    config["model"]["builder"] = {"_target_": target, **extra}
    verdict = _verdicts(config, patterns=["*"])["model.builder._target_"]
    assert not verdict.allowed and why in verdict.why


def test_own_modules_need_the_users_pattern_and_nested_targets_count():
    config, _ = compose()
    config["model"]["builder"] = {"_target_": "mymodels.build", "backbone": {"_target_": "mymodels.layers.Block"}}
    config["plugins"] = ["my_stages"]
    refused = _verdicts(config)
    assert {k for k, j in refused.items() if not j.allowed} == {
        "model.builder._target_", "model.builder.backbone._target_", "plugins[0]"}
    allowed = _verdicts(config, patterns=["mymodels.*", "my_stages"])
    assert all(j.allowed for j in allowed.values())
    assert "mymodels.*" in allowed["model.builder.backbone._target_"].why


def test_a_pkg_path_imports_its_package_so_it_is_judged_too():
    config, _ = compose()
    assert _verdicts(config)["model.weights"].allowed   # pkg://ptflow.zoo/digits_mlp.safetensors
    config["model"]["weights"] = "pkg://attacker_pkg/w.safetensors"
    verdict = _verdicts(config)["model.weights"]
    assert not verdict.allowed and verdict.name == "attacker_pkg"
    assert _verdicts(config, patterns=["attacker_pkg"])["model.weights"].allowed


def test_a_stored_trust_pickle_or_defaults_list_needs_the_users_say():
    config, _ = compose()
    config["model"]["trust_pickle"] = True
    config["defaults"] = [{"hydra/callbacks": "evil"}]
    judged = _verdicts(config)
    assert not judged["model.trust_pickle"].allowed and "--trust-pickle" in judged["model.trust_pickle"].why
    assert not judged["defaults"].allowed
    assert _verdicts(config, trust_pickle=True)["model.trust_pickle"].allowed


def test_the_builtin_list_names_every_builder_ptflow_marks():
    marked = set()
    for path in (ROOT / "ptflow").rglob("*.py"):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "id", "") == "builder_traits" for d in node.decorator_list):
                marked.add(f"{module}.{node.name}")
    assert marked == PTFLOW_BUILDERS
    assert judge_name("k", "ptflow.inputs.hf.from_pretrained", []).allowed


def test_patterns_come_from_the_flag_and_the_projects_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.ptflow.reproduce]\nallow_targets = ["mymodels.*"]\n')
    patterns, note = user_patterns(["extra.build"], tmp_path)
    assert patterns == ["extra.build", "mymodels.*"] and note is None
    (tmp_path / "pyproject.toml").write_text('[tool.ptflow.reproduce]\nallow_targets = "mymodels.*"\n')
    assert "must be a list" in user_patterns([], tmp_path)[1]


# -- the command, against a store whose config.yaml was rewritten ---------------------------

@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("victim")
    result = run_cli(cwd, "model.weights=null", "model.builder.hidden=16", "model.builder.depth=1",
                     "data.max_batches=1", "quantize=none", "benchmark=quick", "pipeline=[load,validate]")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    return SimpleNamespace(cwd=cwd, run=run, uri=result.tracking_uri)


def _rewrite_config(victim, tmp_path: Path, change) -> None:
    """What a store writer does: download config.yaml, change it, upload it over the original."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=victim.uri)
    original = Path(client.download_artifacts(victim.run.info.run_id, "config.yaml", str(tmp_path)))
    config = yaml.safe_load(original.read_text())
    change(config)
    upload = tmp_path / "upload" / "config.yaml"
    upload.parent.mkdir()
    upload.write_text(yaml.safe_dump(config))
    client.log_artifact(victim.run.info.run_id, str(upload))


def _reproduce(cwd: Path, *args: str):
    return subprocess.run([sys.executable, "-m", "ptflow.review.reproduce", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_an_allowed_config_is_listed_and_runs(victim):
    proc = _reproduce(victim.cwd, victim.run.info.run_id, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "ptflow.zoo.digits.DigitsMLP" in proc.stdout and "a ptflow builder" in proc.stdout


def test_a_rewritten_config_is_refused_before_anything_runs(victim, tmp_path):
    """(after the test above: this one leaves the store's config rewritten)"""
    marker = tmp_path / "MARKER"

    def evil(config):
        config["model"]["builder"] = {"_target_": "ptflow.core.files.write_atomic", "path": str(marker), "data": "owned"}
        config["plugins"] = ["attacker_stages"]

    _rewrite_config(victim, tmp_path, evil)
    before = len(mlflow_runs(SimpleNamespace(tracking_uri=victim.uri)))
    said = []
    for extra in ((), ("--dry-run",), ("--allow-target", "*")):
        proc = _reproduce(victim.cwd, victim.run.info.run_id, *extra)
        assert proc.returncode == 2, proc.stderr
        assert "REFUSED" in proc.stderr and "ptflow.core.files.write_atomic" in proc.stderr
        assert "nothing was run" in proc.stderr and "Traceback" not in proc.stderr
        assert not marker.exists()
        said.append(proc.stderr)
    assert "--allow-target attacker_stages" in said[0]   # the plugin could be allowed; the file writer never
    assert len(mlflow_runs(SimpleNamespace(tracking_uri=victim.uri))) == before   # no reproduction run
