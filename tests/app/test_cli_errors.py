"""Bad input through the real CLI: one clear message, a non-zero exit, nothing lost.

Config problems exit 2 before any model loads (no MLflow run exists); problems found
while running exit 1 and leave a FAILED run with the error recorded.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptflow.core.targets import resolve_path
from tests.conftest import mlflow_runs

BUNDLED = resolve_path("pkg://ptflow.zoo/digits_mlp.safetensors")
QUICK = ("benchmark=quick",)


def _assert_rejected(result, *needles):
    assert result.code == 2, (result.stdout, result.stderr)
    for needle in needles:
        assert needle in result.stderr
    assert "nothing was run" in result.stderr
    assert not list(result.outputs.glob("runs/*"))           # no job started
    assert mlflow_runs(result) == [] if (result.outputs / "mlflow.db").exists() else True


def test_unknown_group_option_suggests_the_right_one(ptflow):
    _assert_rejected(ptflow("quantize=int8_dynamik"), "quantize", "int8_dynamik",
                     "did you mean 'int8_dynamic'?", "int8_dynamic, int8_qat")


def test_unknown_keys_and_wrong_types_are_reported_together(ptflow):
    result = ptflow("benchmark.iterz=5", "benchmark.warmup=abc", "sead=1")
    _assert_rejected(result, "3 config problem(s)", "benchmark.iterz", "did you mean 'iters'?",
                     "benchmark.warmup: found 'abc'; expected int", "did you mean 'seed'?")


def test_bad_value_inside_a_sweep_names_the_group(ptflow):
    _assert_rejected(ptflow("-m", "quantize=none,int8", "compile=eager,inductr"),
                     "found 'int8'", "did you mean 'inductor'?")


def test_missing_checkpoint_is_caught_before_loading(ptflow, tmp_path):
    missing = tmp_path / "nope.pt"
    _assert_rejected(ptflow(f"model.weights={missing}"), "model.weights", f"no file at {missing}")


def test_stage_order_that_breaks_the_chain(ptflow):
    result = ptflow("pipeline=[load,validate,export,quantize,benchmark]")
    _assert_rejected(result, "pipeline[3]", "place 'quantize' before 'export'")


def test_cuda_graphs_on_cpu_are_rejected(ptflow):
    _assert_rejected(ptflow("compile=inductor", "compile.mode=reduce-overhead"),
                     "compile.mode", "CUDA graphs")


def test_dry_run_prints_the_plan_and_runs_nothing(ptflow):
    result = ptflow("dry_run=true", "compile=inductor")
    assert result.code == 0, result.stderr
    assert "Plan: 6 stage(s) on cpu" in result.stdout
    assert "quantize       eager -> quantized" in result.stdout
    assert "compile    quantized -> compiled" in result.stdout
    assert not result.outputs.exists()


def _assert_failed_run(result, *needles):
    assert result.code == 1, (result.stdout, result.stderr)
    for needle in needles:
        assert needle in result.stderr
    (run,) = mlflow_runs(result)
    assert run.info.status == "FAILED"
    assert needles[0] in run.data.tags["ptflow.error"]
    (run_dir,) = result.outputs.glob("runs/*/*")
    assert (run_dir / "error.txt").is_file() and (run_dir / "ptflow_result.json").is_file()
    return run


def test_state_dict_key_mismatch_fails_the_run_with_a_readable_list(ptflow, tmp_path):
    renamed = tmp_path / "renamed.pt"
    torch.save({k.replace("net.", "layers."): v for k, v in load_file(BUNDLED).items()}, renamed)
    _assert_failed_run(ptflow(f"model.weights={renamed}", *QUICK),
                       "stage 'load' failed", "missing from the file (8): net.0.weight",
                       "unexpected in the file (8): layers.0.bias", "hint: the file names its modules 'layers.")


@pytest.fixture
def poisoned(tmp_path) -> Path:
    """The bundled weights with a NaN bias: the model runs, its outputs are NaN."""
    from safetensors.torch import save_file

    state = load_file(BUNDLED)
    state["net.0.bias"] = torch.full_like(state["net.0.bias"], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    return path


def test_nan_outputs_fail_validate(ptflow, poisoned):
    _assert_failed_run(ptflow(f"model.weights={poisoned}", *QUICK),
                       "stage 'validate' failed", "NaN", "on eval batch 0")


def test_pickled_model_is_refused_unless_trusted(ptflow, tmp_path):
    from ptflow.zoo.digits import DigitsMLP

    pickled = tmp_path / "full.pt"
    torch.save(DigitsMLP(hidden=32), pickled)
    refused = ptflow(f"model.weights={pickled}", "experiment=latency_only", *QUICK)   # before anything runs
    assert refused.code == 2 and "nothing was run" in refused.stderr, refused.stderr
    assert "pickled Python objects" in refused.stderr and "model.trust_pickle=true" in refused.stderr
    assert "ptflow.zoo.digits.DigitsMLP" in refused.stderr and not mlflow_runs(refused)
    trusted = ptflow(f"model.weights={pickled}", "model.builder=null", "model.trust_pickle=true",
                     "experiment=latency_only", *QUICK)
    assert trusted.code == 0, trusted.stderr


def test_a_failing_sweep_job_does_not_stop_the_others(ptflow, poisoned):
    result = ptflow("-m", f"model.weights={poisoned},pkg://ptflow.zoo/digits_mlp.safetensors",
                    "experiment=latency_only", *QUICK)
    assert result.code == 1
    assert "1 finished, 1 failed" in result.stdout
    assert sorted(r.info.status for r in mlflow_runs(result)) == ["FAILED", "FINISHED"]
