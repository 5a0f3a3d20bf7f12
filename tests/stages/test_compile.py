"""The compile family in-process on a tiny model: each backend and runtime builds, runs
faithfully, and reports build time and the cold first call apart; the plan refuses what
cannot work, with the reason."""
from __future__ import annotations

import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.artifact import Form
from ptflow.core.errors import ConfigError
from ptflow.stages.compile import backends
import ptflow.stages.compile.stage  # noqa: F401 (the stage registers the backends ptflow ships)
from tests.conftest import compose, make_context

TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "tracking=none", "pipeline=[load,validate,quantize,compile,benchmark]")
FAST = ["eager", "inductor", "torchscript_trace", "torchscript_script", "onnxruntime"]
FORMS = {"eager": Form.EAGER, "inductor": Form.COMPILED, "torchscript_trace": Form.SCRIPTED,
         "torchscript_script": Form.SCRIPTED, "onnxruntime": Form.ORT, "aoti": Form.AOTI,
         "inductor_max_autotune": Form.COMPILED}


BUNDLED = ("data.max_batches=1", "benchmark=quick", "tracking=none", "pipeline=[load,validate,quantize,compile,benchmark]")


def _run(tmp_path, *overrides, base=TINY):
    config, choices = compose(*base, *overrides)
    plan = compile_plan(config, choices)
    warnings: dict[str, str] = {}
    ctx = make_context(tmp_path, plan)
    ctx = type(ctx)(**{**ctx.__dict__, "warn": warnings.__setitem__})
    return engine.run(plan, ctx), warnings


def test_the_issue_names_every_backend():
    assert set(backends()) == {"eager", "inductor", "inductor_max_autotune", "cudagraphs", "torchscript_trace",
                               "torchscript_script", "aoti", "onnxruntime"}


def _check(artifact, backend):
    m = artifact.metrics
    assert artifact.form is FORMS[backend]
    if backend != "eager":
        assert m["compile.compile_s"] == pytest.approx(m["compile.build_s"] + m["compile.first_call_s"])
        assert m["compile.first_call_s"] > 0
    assert m["benchmark.max_abs_error"] < 1e-3 and m["benchmark.top1_agreement"] == 1.0


@pytest.mark.parametrize("backend", FAST)
def test_every_fast_backend_runs_faithfully(tmp_path, backend):
    artifact, warnings = _run(tmp_path, "quantize=none", f"compile={backend}")
    _check(artifact, backend)
    if backend.startswith("torchscript"):
        assert "deprecates" in warnings["compile.legacy"] and [k for k in warnings if "compile" in k] == ["compile.legacy"]
    if backend == "onnxruntime":
        assert (tmp_path / "compile" / "model.onnx").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aoti", "inductor_max_autotune"])
def test_ahead_of_time_and_autotuned_backends(tmp_path, backend):
    artifact, _ = _run(tmp_path, "quantize=none", f"compile={backend}", "model.builder.hidden=16")
    _check(artifact, backend)
    if backend == "aoti":
        assert (tmp_path / "compile" / "model.aoti.pt2").is_file()


def test_keyword_inputs_and_channels_last_through_runtimes(tmp_path):
    for backend in ("onnxruntime", "torchscript_trace"):
        artifact, _ = _run(tmp_path, "experiment=digits_transformer", "quantize=none", f"compile={backend}",
                           base=BUNDLED)
        assert artifact.metrics["benchmark.max_abs_error"] < 1e-4
    artifact, warnings = _run(tmp_path, "experiment=digits_cnn", "quantize=none", "compile=eager",
                              "compile.channels_last=true", base=BUNDLED)
    convs = [p for p in artifact.module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert artifact.metrics["benchmark.max_abs_error"] < 1e-4 and "compile.channels_last" not in warnings
    artifact, warnings = _run(tmp_path, "quantize=none", "compile=eager", "compile.channels_last=true")
    assert "no 4-D (conv) weights" in warnings["compile.channels_last"]


@pytest.mark.parametrize("overrides, key, reason", [
    (("compile=cudagraphs",), "compile.backend", "'cudagraphs' needs device=cuda (CUDA graphs)"),
    (("compile=inductor", "compile.mode=reduce-overhead"), "compile.mode", "need device=cuda"),
    (("compile=aoti", "compile.mode=max-autotune"), "compile.mode", "modes apply to compile=inductor"),
    (("quantize=int8_dynamic", "compile=torchscript_trace"), "pipeline[3]",
     "torchao's quantized tensor subclasses (and PT2E graphs) cannot be TorchScripted"),
    (("quantize=legacy_dynamic", "compile=onnxruntime"), "pipeline[3]",
     "packed quantized layers (legacy_dynamic) cannot go through torch.export"),
    (("quantize=legacy_dynamic", "compile=aoti"), "pipeline[3]", "cannot go through torch.export"),
    (("quantize=bf16", "compile=onnxruntime"), "compile.backend", "no bfloat16 Gemm"),
    (("quantize=int8_dynamic", "compile=onnxruntime"), "compile.backend", "cannot convert torchao's"),
])
def test_the_plan_refuses_what_cannot_work(overrides, key, reason):
    config, choices = compose(*TINY, *overrides)
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    assert any(p.key == key and reason in p.render() for p in caught.value.problems), str(caught.value)


def test_the_seed_path_legacy_quantize_then_torchscript_works(tmp_path):
    artifact, warnings = _run(tmp_path, "quantize=legacy_dynamic", "compile=torchscript_script")
    assert artifact.form is Form.SCRIPTED and {"quantize.legacy", "compile.legacy"} <= set(warnings)


def test_a_model_that_does_not_script_fails_in_compile_with_the_stage_named(tmp_path):
    from ptflow.core.errors import StageError

    with pytest.raises(StageError, match="stage 'compile' failed"):
        _run(tmp_path, "quantize=none", "compile=torchscript_script", "experiment=digits_transformer",
             base=BUNDLED)


def test_the_inductor_cache_lives_under_outputs_and_is_warm_the_second_time(tmp_path, monkeypatch):
    import os

    from ptflow.stages.compile import stage as compile_stage

    monkeypatch.setattr(compile_stage, "USER_CACHE_DIR", None)     # as if the user had set none
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))  # restored after
    args = ("quantize=none", "compile=inductor", f"outputs_dir={tmp_path / 'outputs'}", "model.builder.hidden=48",
            "compile.freezing=false")
    cold, _ = _run(tmp_path / "first", *args)
    warm, _ = _run(tmp_path / "second", *args)
    assert any((tmp_path / "outputs" / "cache" / "inductor").iterdir())
    assert cold.metrics["compile.cache_warm"] == 0 and warm.metrics["compile.cache_warm"] == 1
    assert warm.metrics["compile.cache_hits"] >= 1 and warm.metrics["compile.cache_bypassed"] == 0


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cudagraphs", "inductor", "aoti"])
def test_gpu_backends(tmp_path, backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    artifact, _ = _run(tmp_path, "quantize=none", f"compile={backend}", "device=cuda")
    _check(artifact, backend if backend != "cudagraphs" else "inductor")


@pytest.mark.parametrize("overrides,refused_by", [
    (("pipeline=[load,validate,compile]", "compile=torchscript_trace"), "compile=torchscript_trace"),
    (("pipeline=[load,validate,export]", "export.formats=[torchscript]"), "export.formats=torchscript"),
])
def test_a_trace_of_data_dependent_control_flow_stops_the_run_at_the_users_line(tmp_path, overrides, refused_by):
    """torch.jit.trace records one side of `if pixels.sum() > 0`: the traced model is another model,
    so the run stops with torch's warning and the model's line instead of benchmarking or shipping it."""
    import inspect

    from ptflow.core.errors import StageError
    from tests import toy_models

    config, choices = compose("model.weights=null", "data.max_batches=1", "tracking=none", *overrides)
    config["model"]["builder"] = {"_target_": "tests.toy_models.BranchyNet"}
    plan = compile_plan(config, choices)
    with pytest.raises(StageError) as stopped:
        engine.run(plan, make_context(tmp_path, plan), ())
    line = next(n for n, text in enumerate(inspect.getsource(toy_models).splitlines(), 1) if "# BRANCH" in text)
    message = str(stopped.value)
    assert refused_by in message and "Converting a tensor to a Python boolean" in message
    assert f"toy_models.py, line {line})" in message and "tolerance" not in message
