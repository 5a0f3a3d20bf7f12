"""`ptflow-reproduce RUN_ID`: a tracked run runs again from its logged config and every export
file and the task metric are judged; and the config keys it builds on (seed, deterministic, tags).

One real source run (a tiny random-init MLP from a user's extra config dir, seeded), reproduced
twice: as it is (exit 0), and after its logged manifest and metric were tampered with (exit 1)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core.errors import ConfigError
from ptflow.review.reproduce_check import (Outcome, Verdict, exit_code, file_verdicts, headline, metric_verdicts,
                                    run_verdicts, task_metric_keys)
from tests.conftest import compose, mlflow_runs, run_cli

TINY_MODEL = """\
# ptflow -cd extra model=tiny — a small MLP with random (seeded) weights
builder:
  _target_: ptflow.zoo.digits.DigitsMLP
  in_features: 64
  hidden: 32
  depth: 1
  classes: 10
weights: null
format: auto
strict: true
state_dict_key: null
trust_pickle: false
output_key: null
"""


def reproduce(cwd: Path, *args: str):
    """`python -m ptflow.review.reproduce ARGS` from `cwd`: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "ptflow.review.reproduce", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished run whose model option exists only in a user's extra config dir (-cd)."""
    cwd = tmp_path_factory.mktemp("reproduce")
    (cwd / "extra" / "model").mkdir(parents=True)
    (cwd / "extra" / "model" / "tiny.yaml").write_text(TINY_MODEL)
    result = run_cli(cwd, "-cd", "extra", "model=tiny", "quantize=none", "benchmark=quick", "deterministic=true",
                     "pipeline=[load,validate,benchmark,export]", "export.formats=[pt2,safetensors]",
                     "+tags.team=vision", "export.register_as=tiny-clf")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    shutil.rmtree(cwd / "extra")   # the reproduction must not need the user's config dir
    return SimpleNamespace(result=result, run=run, cwd=cwd)


@pytest.fixture(scope="module")
def reproduced(source):
    return reproduce(source.cwd, source.run.info.run_id)


def test_a_reproduction_matches_file_by_file_and_is_tagged(source, reproduced):
    code, out, err = reproduced
    assert code == 0, out + err
    run_id = source.run.info.run_id
    assert f"run {run_id} 'tiny" in out and "FINISHED" in out
    for line in ("same       export pt2", "same       export safetensors", "same       run status",
                 "same       metric validate/top1_accuracy", "same       metric benchmark/top1_accuracy"):
        assert line in out
    assert "model.pt2: sha256 " in out and "identical" in out
    assert "REPRODUCED: all" in out and "(timings vary: not compared)" in out
    new = [r for r in mlflow_runs(source.result) if r.info.run_id != run_id]
    assert len(new) == 1 and new[0].info.experiment_id == source.run.info.experiment_id
    tags = new[0].data.tags
    assert tags["ptflow.reproduces"] == run_id and new[0].data.params["reproduces"] == run_id
    # named and tagged as the source was: the option from the (now deleted) extra dir, the user tag
    assert tags["model"] == "tiny" and tags["team"] == "vision" and new[0].info.run_name.startswith("tiny @")
    assert Path(tags["ptflow.run_dir"]).parent.parent == source.cwd / "outputs" / "runs"
    # a check, not a release: the reproduction logs its model but registers no new version
    assert "ptflow.model.pt2" in tags and "ptflow.registered" not in tags
    assert source.run.data.tags["ptflow.registered"] == "tiny-clf/1" and "export.register_as=null" in out


def test_the_determinism_switch_and_seeding_are_recorded_in_params(source):
    params = source.run.data.params
    assert params["deterministic"] == "true"
    assert params["system.deterministic"] == "true" and params["system.deterministic_algorithms"] == "True"
    assert params["system.cudnn_deterministic"] == "True" and params["system.deterministic_warn_only"] == "False"
    assert params["system.seed"] == "0" and params["system.seeded"] == "torch,random,numpy"
    assert source.run.data.tags["team"] == "vision"


def test_a_changed_file_or_metric_is_a_mismatch(source, reproduced):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=source.result.tracking_uri)
    run_id = source.run.info.run_id
    logged = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    manifest_path = logged / "files" / "export.manifest" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["sha256"] = "0" * 64          # the pt2 entry
    manifest_path.write_text(json.dumps(manifest))
    client.log_metric(run_id, "validate/top1_accuracy", 0.5, step=1)   # its latest value now differs
    code, out, err = reproduce(source.cwd, run_id)
    assert code == 1, out + err
    assert "DIFFERENT  export pt2" in out and "the source's 000000000000" in out
    assert "DIFFERENT  metric validate/top1_accuracy" in out and "the source's 0.5" in out
    assert "same       export safetensors" in out and "NOT REPRODUCED: 2 different" in out


@pytest.fixture
def inproc(monkeypatch, capsys):
    """`ptflow-reproduce ARGS` in this process (for what is refused before any run): (code, stderr)."""
    from ptflow.review import reproduce as command

    def call(cwd: Path, *args: str):
        monkeypatch.chdir(cwd)
        try:
            code = command.run(list(args))
        except SystemExit as exit_:   # argparse
            code = exit_.code
        return code, capsys.readouterr().err
    return call


def test_unknown_run_missing_store_and_bad_arguments_exit_2(source, tmp_path, inproc):
    code, err = inproc(source.cwd, "0123abcd")
    assert code == 2 and "no run '0123abcd' in the MLflow store sqlite:///" in err
    assert "--tracking-uri" in err and source.run.info.run_id in err   # the latest runs are listed
    code, err = inproc(source.cwd, source.run.info.run_id[:3], "--dry-run")   # too short to be a prefix
    assert code == 2 and "no run" in err
    code, err = inproc(tmp_path, "0123abcd")
    assert code == 2 and f"no MLflow store at {tmp_path / 'outputs' / 'mlflow.db'}" in err
    assert not (tmp_path / "outputs").exists()                         # nothing created by looking
    code, err = inproc(tmp_path, "x", "--atol", "-1")
    assert code == 2 and "expected a number >= 0" in err


def test_a_run_without_a_logged_config_is_refused(source, inproc):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=source.result.tracking_uri)
    bare = client.create_run(source.run.info.experiment_id)
    client.set_terminated(bare.info.run_id)
    code, err = inproc(source.cwd, bare.info.run_id)
    assert code == 2 and "has no config.yaml artifact" in err


# -- the config that reproduces: composes back into the source's config ------------------

def test_the_written_config_composes_into_the_source_config_with_its_choices(tmp_path):
    from ptflow.app.overrides import Source, compose_config
    from ptflow.review.reproduce import reproduction_config, source_choices, write_config

    config, choices = compose("quantize=none", "experiment=latency_only")
    config["task_name"] = "literal ${not_an_interpolation}"
    tags = {**choices, "pipeline": "load,validate", "team": "vision"}
    picked = source_choices(config, tags, {"model", "quantize", "experiment", "device"})
    assert picked == {g: o for g, o in choices.items() if not g.startswith("hydra") and g != "tracking"}
    assert picked["experiment"] == "latency_only" and picked["quantize"] == "none"
    uri = f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').resolve()}"
    new, changes = reproduction_config(config, "abc123", uri, "ptflow", tmp_path / "outputs")
    assert "reproduces=abc123" in changes and new["tracking"]["uri"] is None   # its default store is this one
    elsewhere, changes = reproduction_config({**config, "export": {**config["export"], "dir": "shipped"}},
                                             "abc123", uri, "ptflow", None)
    assert elsewhere["export"]["dir"] is None and "export.dir=null (was shipped" in " ".join(changes)
    write_config(tmp_path / "conf", new, picked, "# ptflow-reproduce test\n")
    again, again_choices = compose_config(Source(tmp_path / "conf", "reproduce"), [], resolve=True)
    assert again == new and again["task_name"] == "literal ${not_an_interpolation}"
    assert {g: again_choices[g] for g in picked} == picked


# -- the config keys: deterministic, tags ------------------------------------------------

def _problems(*overrides: str) -> str:
    config, choices = compose(*overrides)
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    return str(caught.value)


def test_bad_determinism_and_tag_values_name_their_key():
    text = _problems("deterministic=maybe", "+tags.ptflow.reproduces=x", "+tags.bad=[1]")
    assert "deterministic: found 'maybe'; expected true, false or warn" in text
    assert "tags.ptflow.reproduces" in text and "ptflow does not set itself" in text
    assert "tags.bad: found [1]; expected a text, number or true/false value" in text
    text = _problems("+tags.quantize=x", "deterministic=true", "device.cudnn_benchmark=true")
    assert "tags.quantize" in text and "not a config group or key" in text
    assert "device.cudnn_benchmark: found True; expected false with deterministic=true" in text


def test_tags_become_text_and_warn_is_a_determinism_mode():
    config, choices = compose("+tags.team=vision", "+tags.n=3", "+tags.ok=true", "deterministic=warn")
    settings = compile_plan(config, choices).settings
    assert settings.tags == {"team": "vision", "n": "3", "ok": "true"} and settings.deterministic == "warn"


def test_determinism_is_applied_both_ways(monkeypatch):
    import torch

    from ptflow.measure import device

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = device.DeviceConfig(type=device.DeviceType.CUDA)   # only the settings: nothing runs on CUDA here
    try:
        applied, warnings = device.apply_determinism("warn", device.DeviceConfig())
        assert applied["deterministic_algorithms"] and applied["deterministic_warn_only"] and not warnings
        assert "cublas_workspace_config" not in applied and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        applied, _ = device.apply_determinism(True, cuda)
        assert applied["cublas_workspace_config"] == ":4096:8" == os.environ["CUBLAS_WORKSPACE_CONFIG"]
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")   # the user's own choice is kept
        assert device.apply_determinism(True, cuda)[0]["cublas_workspace_config"] == ":16:8"
        applied, _ = device.apply_determinism(False, device.DeviceConfig())
        assert not applied["deterministic_algorithms"] and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


# -- the verdicts, pure -------------------------------------------------------------------

def _entry(fmt: str, sha: str, name: str = "model") -> dict:
    return {"format": fmt, "file": f"{name}.{fmt}", "sha256": sha, "tolerance": 1e-3}


def _by_outputs(source, new):
    return Verdict(f"export {source['format']}", Outcome.SAME, "outputs agree")


def test_byte_stable_files_are_judged_by_sha_and_the_others_by_outputs():
    source = {"files": [_entry("pt2", "a" * 64), _entry("onnx", "b" * 64), _entry("aoti", "c" * 64),
                        _entry("torchscript", "d" * 64)], "example": {"file": "x", "sha256": "e" * 64}}
    new = {"files": [_entry("pt2", "a" * 64), _entry("onnx", "f" * 64), _entry("aoti", "9" * 64),
                     _entry("torchscript", "d" * 64)], "example": {"file": "x", "sha256": "e" * 64}}
    verdicts = {v.item: v for v in file_verdicts(source, new, _by_outputs)}
    assert verdicts["export pt2"].outcome is Outcome.SAME
    assert verdicts["export onnx"].outcome is Outcome.DIFFERENT and "ffffffffffff" in verdicts["export onnx"].detail
    assert verdicts["export aoti"].detail == "outputs agree"            # not byte-stable: compared by outputs
    assert "identical" in verdicts["export torchscript"].detail          # same bytes need no loading
    assert verdicts["export example"].outcome is Outcome.SAME


def test_missing_or_extra_files_and_a_missing_manifest_are_never_a_pass():
    only_source = file_verdicts({"files": [_entry("pt2", "a")]}, {"files": [_entry("onnx", "b")]}, _by_outputs)
    assert [v.outcome for v in only_source] == [Outcome.DIFFERENT, Outcome.DIFFERENT]
    (unchecked,) = file_verdicts(None, {"files": []}, _by_outputs)
    assert unchecked.outcome is Outcome.UNCHECKED and exit_code([unchecked], True) == 1


def test_the_task_metric_must_be_identical():
    source = {"validate/top1_accuracy": 0.98, "benchmark/top1_accuracy": 0.97,
              "benchmark/top1_accuracy_delta": -0.01, "benchmark/candidate.p50_ms": 1.0, "accuracy/accepted": 1.0}
    assert task_metric_keys("top1_accuracy", source) == ["accuracy/accepted", "benchmark/top1_accuracy",
                                                         "benchmark/top1_accuracy_delta", "validate/top1_accuracy"]
    same = metric_verdicts("top1_accuracy", source, dict(source, **{"benchmark/candidate.p50_ms": 9.0}))
    assert all(v.outcome is Outcome.SAME for v in same) and exit_code(same, True) == 0
    changed = metric_verdicts("top1_accuracy", source, dict(source, **{"benchmark/top1_accuracy": 0.9700001}))
    assert [v.item for v in changed if v.outcome is Outcome.DIFFERENT] == ["metric benchmark/top1_accuracy"]
    assert headline(changed) == "NOT REPRODUCED: 1 different of 4 item(s)"
    (none,) = metric_verdicts(None, source, {})
    assert none.outcome is Outcome.SAME and "data.metric is null" in none.detail


def test_a_failed_source_or_reproduction_is_not_reproduced():
    def source_run(status):
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(
            tags={"ptflow.error": "stage 'load' failed"}, metrics={"validate/top1_accuracy": 0.9}))

    finished = SimpleNamespace(status="FINISHED", metrics={"validate.top1_accuracy": 0.9}, error=None, reason=None)
    failed = SimpleNamespace(status="FAILED", metrics={}, error="stage 'export' failed", reason=None)
    config = {"pipeline": ["load", "validate"], "data": {"metric": "top1_accuracy"}}
    verdicts = run_verdicts(source_run("FAILED"), config, (None, None), finished, _by_outputs)
    assert verdicts[0].outcome is Outcome.DIFFERENT and "the source ended FAILED" in verdicts[0].detail
    assert exit_code(verdicts, True) == 1
    (status,) = run_verdicts(source_run("FINISHED"), config, (None, None), failed, _by_outputs)
    assert "the reproduction ended FAILED: stage 'export' failed" in status.detail
    assert exit_code([status], False) == 1
    assert exit_code(run_verdicts(source_run("FINISHED"), config, (None, None), finished, _by_outputs), True) == 0


def test_the_bundled_config_lists_the_keys_with_their_defaults():
    config, _ = compose()
    assert config["seed"] == 0 and config["deterministic"] is False and config["tags"] == {}
    assert config["reproduces"] is None


def test_a_dry_run_says_what_it_would_compare():
    from ptflow.review.reproduce_check import planned_checks

    config = {"pipeline": ["load", "export"], "data": {"metric": "top1_accuracy"}}
    manifest = {"files": [{"format": "pt2"}, {"format": "aoti"}], "example": {"file": "model.example.safetensors"}}
    assert planned_checks(config, manifest) == ("pt2, example by sha256; aoti by sha256, else by outputs; "
                                                "the task metric top1_accuracy")
    assert "the source logged no manifest" in planned_checks(config, None)


@pytest.mark.slow
def test_an_int8_static_inductor_run_is_reproduced_byte_for_byte(tmp_path):
    """PT2E's graph ids no longer change the .pt2 from process to process (stable_graph_ids)."""
    result = run_cli(tmp_path, "quantize=int8_static", "compile=inductor", "benchmark=quick",
                     "quantize.calibration.batches=2", "export.formats=[pt2]")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    code, out, err = reproduce(tmp_path, run.info.run_id)
    assert code == 0, out + err
    assert "same       export pt2" in out and "identical" in out and "REPRODUCED: all" in out
