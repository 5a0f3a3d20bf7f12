"""The GPU path (skipped where torch.cuda.is_available() is False, as in CI)."""
from __future__ import annotations

import pytest

from tests.conftest import mlflow_runs

pytestmark = pytest.mark.cuda


def test_default_pipeline_on_cuda_with_inductor(ptflow):
    result = ptflow("device=cuda", "compile=inductor", "benchmark=quick")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    assert run.info.status == "FINISHED"
    assert run.data.params["system.device"] == "cuda:0"
    assert "cuda_version" in " ".join(run.data.params)
    assert run.data.metrics["benchmark/top1_accuracy"] > 0.95


def test_cuda_graphs_mode_runs_on_cuda(ptflow):
    result = ptflow("device=cuda", "quantize=none", "compile=inductor", "compile.mode=reduce-overhead",
                    "benchmark=quick", "experiment=latency_only")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    assert run.data.metrics["compile/compile_s"] > 0


def test_a_cuda_export_loads_and_runs_in_a_fresh_process(ptflow):
    """The fresh-process check feeds the example's inputs on the run's device (onnx: on the host)."""
    import json

    result = ptflow("device=cuda", "quantize=none", "benchmark=quick", "export.formats=[pt2,onnx]",
                    "pipeline=[load,validate,export]")
    assert result.code == 0, result.stderr
    (path,) = result.outputs.glob("runs/*/*/export/manifest.json")
    assert all(e["metrics"]["fresh_check_s"] > 0 for e in json.loads(path.read_text())["files"])
