"""The benchmark stage's protocol end to end: its config and plan-time refusals, the metrics
and files a run writes (consistent, never judged fast or slow), batch sizes, throughput mode,
the summary's speedup CI, and the CUDA timing path (behind the cuda marker)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.artifact import Artifact, Baseline, Form
from ptflow.core.errors import ConfigError, InputError
from ptflow.core.spec import Batch, InputSpec, ModelInputs, TensorSpec
from ptflow.core.stage import RunContext
from ptflow.decide.accuracy import AccuracyConfig
from ptflow.runs.summary import one_line, render
from ptflow.stages.benchmark.stage import BenchmarkConfig, BenchmarkStage, BenchmarkStageConfig
from ptflow.stages.benchmark.cuda_timing import CudaFeed
from ptflow.stages.benchmark.timing import Mode, resized
from tests.conftest import compose, make_context

TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "tracking=none", "device.threads=1", "pipeline=[load,validate,quantize,benchmark]")
ROLES = ("baseline", "candidate")


def _run(tmp_path, *overrides):
    config, choices = compose(*TINY, *overrides)
    plan = compile_plan(config, choices)
    warnings: dict[str, str] = {}
    ctx = make_context(tmp_path, plan)
    ctx = RunContext(**{**ctx.__dict__, "warn": warnings.__setitem__})
    return engine.run(plan, ctx), warnings


# --- config and plan ------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, says", [([], "an empty list times nothing"), ([0, 8], "0 is not a batch size"),
                                         ([4, -1], "-1 is not a batch size"), ([8, 1, 8], "8 is listed twice")])
def test_bad_batch_sizes_are_refused_naming_the_key(sizes, says):
    with pytest.raises(ConfigError) as caught:
        BenchmarkConfig(batch_sizes=tuple(sizes))
    (problem,) = caught.value.problems
    assert problem.key == "batch_sizes" and says in problem.hint and "e.g. [1, 8, 64]" in problem.expected


@pytest.mark.parametrize("changes, key", [(dict(inflight=0), "inflight"), (dict(warmup_s=5.0, warmup_max_s=1.0), "warmup_max_s"),
                                          (dict(min_time_s=3.0, max_time_s=2.0), "max_time_s"),
                                          (dict(settle=math.nan), "settle"), (dict(ci_target=0.0), "ci_target"),
                                          (dict(block_s=-1.0), "block_s"), (dict(iters=1), "iters"),
                                          (dict(turn_samples=0), "turn_samples")])
def test_meaningless_protocol_settings_are_refused(changes, key):
    with pytest.raises(ConfigError) as caught:
        BenchmarkConfig(**changes)
    assert caught.value.problems[0].key == key


def _refused(*overrides):
    """The one problem the plan finds in the config `overrides` compose into."""
    with pytest.raises(ConfigError) as caught:
        compile_plan(*compose(*overrides))
    (problem,) = caught.value.problems
    return problem


def test_the_removed_rounds_key_says_what_replaced_it():
    problem = _refused("benchmark.rounds=2")
    assert problem.key == "benchmark.rounds" and "removed" in problem.expected
    assert "alternate in short turns" in problem.hint and "benchmark.iters" in problem.hint


def test_several_batches_in_flight_on_cpu_are_refused_at_plan_time():
    problem = _refused("benchmark.mode=throughput", "benchmark.inflight=2")
    assert problem.key == "benchmark.inflight" and "device=cpu" in problem.expected
    assert "benchmark.inflight=null" in problem.hint and "device=cuda" in problem.hint
    compile_plan(*compose("benchmark.mode=throughput"))   # null: 1 batch on CPU, fine


def test_batch_sizes_need_a_dynamic_batch_dim_at_plan_time():
    problem = _refused("benchmark.batch_sizes=[1,8]", "data.dynamic_batch=false")
    assert problem.key == "benchmark.batch_sizes" and "data.dynamic_batch=true" in problem.hint


def test_the_plan_says_how_the_benchmark_will_time():
    plan = compile_plan(*compose("benchmark=rigorous", "benchmark.batch_sizes=[1,8]"))
    (note, repeats, gate) = [n.text for p in plan.stages if p.spec.name == "benchmark" for n in p.notes]
    for needle in ("batch sizes [1, 8]", ">= 50 calls", "alternating turns of 10", ">= 200 samples", "±0.5%",
                   "<= 30 s"):
        assert needle in note
    assert repeats.startswith("repeats: 10 — this process, then 9 fresh process(es)")
    quick = compile_plan(*compose("benchmark=quick"))
    (_, one, _) = [n.text for p in quick.stages if p.spec.name == "benchmark" for n in p.notes]
    assert one.startswith("repeats: 1 — timed in this process only")
    assert gate.startswith("accuracy gate: top1_accuracy may drop at most 0.01")   # the rest: tests/decide


# --- a real run: every figure present and consistent ----------------------------------------

def _check_role(m: dict, prefix: str, minimum: int) -> None:
    n = m[f"{prefix}.n"]
    assert n >= minimum
    assert m[f"{prefix}.min_ms"] <= m[f"{prefix}.p50_ms"] <= m[f"{prefix}.p90_ms"] <= m[f"{prefix}.p95_ms"] \
        <= m[f"{prefix}.p99_ms"] <= m[f"{prefix}.max_ms"]
    assert m[f"{prefix}.p50_ci_low_ms"] <= m[f"{prefix}.p50_ms"] <= m[f"{prefix}.p50_ci_high_ms"]
    assert m[f"{prefix}.p99_supported"] == float(n >= 100) and m[f"{prefix}.p95_supported"] == float(n >= 20)
    assert m[f"{prefix}.cold_ms"] > 0 and m[f"{prefix}.calls_per_sample"] >= 1
    assert m[f"{prefix}.dispersion"] == pytest.approx(m[f"{prefix}.iqr_ms"] / m[f"{prefix}.p50_ms"])


def test_a_quick_run_reports_every_figure_consistently(tmp_path):
    artifact, warnings = _run(tmp_path, "benchmark.batch_sizes=[4,1]")
    m = artifact.metrics
    for role in ROLES:
        _check_role(m, f"benchmark.{role}", minimum=30)
    assert m["benchmark.baseline.n"] == m["benchmark.candidate.n"]          # samples come in pairs
    assert m["benchmark.speedup_ci_low"] <= m["benchmark.speedup_p50"] <= m["benchmark.speedup_ci_high"]
    assert m["benchmark.speedup_p50"] == pytest.approx(m["benchmark.baseline.p50_ms"] / m["benchmark.candidate.p50_ms"])
    stability = artifact.tags["benchmark.stability"]
    assert (m["benchmark.unstable"], m["benchmark.invalid"]) == {"stable": (0.0, 0.0), "unstable": (1.0, 0.0),
                                                                 "invalid": (1.0, 1.0)}[stability]
    assert (f"benchmark.{stability}" in warnings) == (stability != "stable")
    # the first size is the headline; every size has its own few figures
    assert m["benchmark.batch_size"] == 4
    for role in ROLES:
        assert m[f"benchmark.bs4.{role}.p50_ms"] == m[f"benchmark.{role}.p50_ms"]
        assert m[f"benchmark.bs1.{role}.throughput_per_s"] == pytest.approx(1 / (m[f"benchmark.bs1.{role}.p50_ms"] / 1e3))
    assert m["benchmark.bs1.speedup_ci_low"] <= m["benchmark.bs1.speedup_p50"] <= m["benchmark.bs1.speedup_ci_high"]

    rows = json.loads(artifact.files["batch_sizes"].read_text())
    assert [(r["batch_size"], r["role"]) for r in rows] == [(4, "baseline"), (4, "candidate"), (1, "baseline"), (1, "candidate")]
    assert all(r["p50_ms"] > 0 and r["throughput_per_s"] > 0 and r["n"] >= 30 for r in rows)
    assert rows[0]["p50_ms"] == m["benchmark.baseline.p50_ms"]
    raw = json.loads(artifact.files["latency_samples"].read_text())
    assert raw["unit"] == "ms per call" and [s["batch_size"] for s in raw["sizes"]] == [4, 1]
    head = raw["sizes"][0]
    assert head["order"] == list(ROLES) and head["turn_samples"] == 10
    assert all(len(head["samples_ms"][role]) == m[f"benchmark.{role}.n"] for role in ROLES)
    assert head["cold_ms"]["candidate"] == pytest.approx(m["benchmark.candidate.cold_ms"])


def test_throughput_mode_times_batches_back_to_back(tmp_path):
    artifact, _ = _run(tmp_path, "benchmark.mode=throughput", "quantize=none")
    m = artifact.metrics
    for role in ROLES:
        _check_role(m, f"benchmark.{role}", minimum=30)
        assert m[f"benchmark.{role}.calls_per_sample"] >= 2          # never one call alone
        assert m[f"benchmark.{role}.throughput_per_s"] == pytest.approx(
            m["benchmark.batch_size"] / (m[f"benchmark.{role}.p50_ms"] / 1e3))


def test_without_a_baseline_there_is_no_speedup(tmp_path):
    artifact, _ = _run(tmp_path, "benchmark.baseline=false", "quantize=none")
    assert "benchmark.candidate.p50_ms" in artifact.metrics
    assert not any(k.startswith(("benchmark.baseline.", "benchmark.speedup")) for k in artifact.metrics)


# --- inputs at other batch sizes ------------------------------------------------------------

def _spec(*shapes) -> InputSpec:
    return InputSpec(tuple(TensorSpec(f"x{i}", shape, "float32") for i, shape in enumerate(shapes)))


def test_resized_slices_or_repeats_the_eval_rows_in_order():
    rows = torch.arange(6.0).reshape(3, 2)
    inputs = ModelInputs(args=(rows,), kwargs={"mask": torch.tensor([1, 2, 3])})
    spec = InputSpec((TensorSpec("arg0", ("batch", 2), "float32"), TensorSpec("mask", ("batch",), "int64")))
    assert resized(inputs, spec, 3) is inputs
    two = resized(inputs, spec, 2)
    assert torch.equal(two.args[0], rows[:2]) and two.kwargs["mask"].tolist() == [1, 2]
    seven = resized(inputs, spec, 7)
    assert seven.batch_size() == 7 and seven.kwargs["mask"].tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert torch.equal(seven.args[0][3:6], rows)


def test_resized_refuses_a_fixed_batch_dim_and_sizes_outside_its_range():
    inputs = ModelInputs(args=(torch.zeros(3, 2),))
    with pytest.raises(InputError, match=r"benchmark.batch_sizes: batch size 8 needs a dynamic batch dim.*x0"):
        resized(inputs, _spec((3, 2)), 8)
    bounded = InputSpec((TensorSpec("x0", ("batch", 2), "float32"),), ranges=(("batch", 2, 16),))
    with pytest.raises(InputError, match=r"batch size 32 is outside the batch dim's range 2\.\.16"):
        resized(inputs, bounded, 32)


class OnlySix(nn.Module):
    """A model that accepts nothing but its eval batch of 6 rows (a traced, fixed-shape model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 6:
            raise RuntimeError(f"expected 6 rows, got {x.shape[0]}")
        return x


def test_a_model_that_refuses_another_batch_size_fails_naming_the_key(tmp_path):
    model = OnlySix()
    inputs = ModelInputs(args=(torch.randn(6, 4),))
    artifact = Artifact(model=model, form=Form.EAGER, module=model, inputs=inputs.spec(), batches=(Batch(inputs),),
                        device="cpu", dtype="float32",
                        baseline=Baseline(model, ((),), (), None, None))
    quick = dict(warmup=1, warmup_s=0.0, warmup_max_s=0.05, iters=5, min_time_s=0.0, max_time_s=0.05, fidelity=False)
    stage = BenchmarkStage(BenchmarkStageConfig(BenchmarkConfig(batch_sizes=(6, 2), **quick), AccuracyConfig()))
    ctx = RunContext(tmp_path, "cpu", 0, "0" * 64, {"threads": 1}, lambda it, **_: it)
    with pytest.raises(InputError, match=r"benchmark.batch_sizes: timing batch size 2 failed \(RuntimeError: "
                                         r"expected 6 rows, got 2\).*benchmark.batch_sizes=null"):
        stage.run(artifact, ctx)


# --- the summary ----------------------------------------------------------------------------

def _summary(**extra):
    return {"choices": {"model": "digits_mlp", "quantize": "int8_dynamic"}, "stages_s": {"quantize": 1, "benchmark": 1},
            "wall_s": 1.0, "latency_ms": {"baseline": {"p50": 4.4, "p90": 4.9, "p95": 5.0, "p99": 6.0},
                                          "optimized": {"p50": 2.0, "p90": 2.2, "p95": 2.3, "p99": 2.9}},
            "speedup_p50": 2.2134, "speedup_ci": [2.171, 2.2549], "agreement": {},
            "size_mb": {"before": None, "after": None}, "exports": [],
            "mlflow": {"run_id": None, "tracking_uri": None, "experiment": None}, "run_dir": "/tmp/run", **extra}


def test_the_summary_shows_the_speedup_with_its_ci_and_flags_invalid_timings():
    text = render(_summary(dispersion={"baseline": 0.3, "optimized": 0.05}, unstable=True, invalid=True,
                           unsupported={"baseline": {"n": 30, "percentiles": ["p99"]}},
                           by_batch_size={"1": {"baseline": 0.12, "optimized": 0.5, "speedup_p50": 0.24,
                                                "speedup_ci": [0.2, 0.3]}}))
    assert "speedup 2.21x [2.17, 2.25]" in text and "latency p95 (ms)" in text
    assert "batch 1 p50 (ms)" in text and "speedup 0.24x [0.20, 0.30]" in text
    assert "INVALID: not a measurement" in text and "n=30: too few samples for p99" in text
    assert one_line(_summary(invalid=True, unstable=True)).endswith("2.21x [2.17, 2.25] · INVALID timings")
    assert one_line(_summary(unstable=True)).endswith(" · UNSTABLE timings")


# --- CUDA -----------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("mode, inflight", [(Mode.LATENCY, None), (Mode.THROUGHPUT, None), (Mode.THROUGHPUT, 1)])
def test_the_cuda_timing_paths(tmp_path, mode, inflight):
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).cuda().eval()
    inputs = ModelInputs(args=(torch.randn(32, 64, device="cuda"),))
    with torch.inference_mode():
        outputs = model(inputs.args[0]).cpu()
    artifact = Artifact(model=model, form=Form.EAGER, module=model, inputs=inputs.spec(), batches=(Batch(inputs),),
                        device="cuda:0", dtype="float32", baseline=Baseline(model, ((("output", outputs),),),
                                                                           (outputs,), None, None))
    config = BenchmarkConfig(mode=mode, inflight=inflight, batch_sizes=(32, 8), warmup=3, warmup_s=0.0,
                             warmup_max_s=0.5, iters=30, min_time_s=0.0, max_time_s=0.5, fidelity=False)
    stage = BenchmarkStage(BenchmarkStageConfig(config, AccuracyConfig()))
    ctx = RunContext(tmp_path, "cuda:0", 0, "0" * 64, {"threads": 1}, lambda it, **_: it)
    m = stage.run(artifact, ctx).metrics
    for role in ROLES:
        _check_role(m, f"benchmark.{role}", minimum=30)
        assert (m[f"benchmark.{role}.calls_per_sample"] == 1) == (mode is Mode.LATENCY)   # events time single calls
    assert m["benchmark.speedup_ci_low"] <= m["benchmark.speedup_p50"] <= m["benchmark.speedup_ci_high"]


@pytest.mark.cuda
def test_the_cuda_feed_computes_on_the_batches_it_copies():
    model = nn.Linear(16, 4).cuda().eval()
    inputs = ModelInputs(args=(torch.randn(8, 16, device="cuda"),))
    feed = CudaFeed(model, inputs, inflight=3)
    with torch.inference_mode():
        expected = model(inputs.args[0])
        results = [feed() for _ in range(7)]          # every slot reused at least twice
        torch.cuda.synchronize()
    assert all(torch.allclose(r, expected) for r in results)
    assert feed.host[0].is_pinned() and feed.slots[0].args[0].is_cuda
