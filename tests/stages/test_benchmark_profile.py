"""benchmark's untimed passes: memory, FLOPs and % of peak, torch.profiler; their config and
plan-time checks."""
from __future__ import annotations

import ctypes
import json
import math

import pytest
import torch

from ptflow.core import typed
from ptflow.core.errors import ConfigError
from ptflow.measure.modelinfo import model_size_mb
from ptflow.stages.benchmark import profile as bp
from ptflow.stages.benchmark import roofline as rf
from ptflow.stages.benchmark.profile import Activity, ProfileConfig
from ptflow.stages.benchmark.roofline import Peak

BIG_MB = 128   # above glibc's largest mmap threshold (32 MB): freed pages go back to the OS


def _linear_call(batch: int = 8):
    model = torch.nn.Linear(64, 10).eval()
    inputs = torch.randn(batch, 64)
    return model, (lambda: model(inputs))


def _needs_pass_only_rss():
    if not bp._CLEAR_REFS.exists() or bp._status_bytes("VmHWM") is None:
        pytest.skip("no /proc/self/clear_refs and VmHWM here (not Linux): only the process peak is available")


# --- memory --------------------------------------------------------------------------------

def test_memory_pass_reports_the_peak_rss_of_one_call():
    _needs_pass_only_rss()
    _, call = _linear_call()
    figures = bp.memory_pass(call, "cpu", "candidate")
    assert figures.notes == ()
    assert figures.metrics["benchmark.candidate.peak_rss_mb"] > 0
    assert figures.metrics["benchmark.candidate.peak_rss_rise_mb"] >= 0
    assert not any("cuda" in key for key in figures.metrics)


def test_a_pass_that_allocates_more_shows_a_higher_peak():
    _needs_pass_only_rss()
    _, small = _linear_call()
    big = lambda: torch.ones(BIG_MB * 2**20 // 4).sum()   # noqa: E731 — touched, then freed
    quiet = bp.memory_pass(small, "cpu", "baseline").metrics
    heavy = bp.memory_pass(big, "cpu", "candidate").metrics
    assert heavy["benchmark.candidate.peak_rss_rise_mb"] >= 0.9 * BIG_MB * 2**20 / 1e6
    assert heavy["benchmark.candidate.peak_rss_mb"] > quiet["benchmark.baseline.peak_rss_mb"]
    assert quiet["benchmark.baseline.peak_rss_rise_mb"] < heavy["benchmark.candidate.peak_rss_rise_mb"] / 4


def test_the_rise_counts_activations_even_after_many_warm_calls():
    """Timing frees and reuses the same heap memory; the pass hands it back first (malloc_trim),
    so the rise shows what one call needs rather than 0."""
    _needs_pass_only_rss()
    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("not glibc: no malloc_trim")
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024)).eval()
    inputs = torch.randn(150, 64)
    with torch.inference_mode():
        for _ in range(20):
            model(inputs)
    rise = bp.memory_pass(lambda: model(inputs), "cpu", "candidate").metrics["benchmark.candidate.peak_rss_rise_mb"]
    assert rise >= 150 * 1024 * 4 / 1e6   # at least one 150 x 1024 float32 activation


def test_without_clear_refs_the_figure_is_the_process_peak_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(bp, "_CLEAR_REFS", tmp_path / "absent" / "clear_refs")
    _, call = _linear_call()
    figures = bp.memory_pass(call, "cpu", "candidate")
    assert figures.metrics["benchmark.candidate.peak_rss_mb"] > 0
    assert "benchmark.candidate.peak_rss_rise_mb" not in figures.metrics
    assert len(figures.notes) == 1 and "process's peak since it started" in figures.notes[0]


def test_param_buffer_mb_adds_the_buffers_the_state_dict_leaves_out():
    model, _ = _linear_call()
    assert bp.param_buffer_mb(model) == pytest.approx((64 * 10 + 10) * 4 / 1e6)
    table = torch.zeros(1000)
    model.register_buffer("table", table, persistent=False)
    model.register_module("twin", torch.nn.Module())
    model.twin.register_buffer("table", table, persistent=False)   # one tensor, two names: counted once
    assert model_size_mb(model) == pytest.approx((64 * 10 + 10) * 4 / 1e6)
    assert bp.param_buffer_mb(model) == pytest.approx((64 * 10 + 10 + 1000) * 4 / 1e6)


# --- FLOPs and % of peak -------------------------------------------------------------------

def test_flops_of_a_linear_layer_are_two_multiply_adds_per_weight_and_row():
    _, call = _linear_call(batch=8)
    assert rf.flops_per_call(call) == rf.FlopCount(2 * 8 * 64 * 10)


def test_a_call_the_counter_cannot_see_is_reported_as_uncounted_not_zero():
    elementwise = rf.flops_per_call(lambda: torch.ones(8) + 1)
    assert elementwise.flops is None and "counted 0 FLOPs" in elementwise.reason

    def foreign_runtime():
        raise RuntimeError("session closed")

    broken = rf.flops_per_call(foreign_runtime)
    assert broken.flops is None and "RuntimeError: session closed" in broken.reason


def test_achieved_rate_and_percent_of_peak():
    per_s, pct = rf.achieved(flops=2e9, p50_ms=1.0, peak_tflops=4.0)
    assert per_s == pytest.approx(2e12) and pct == pytest.approx(50.0)
    assert rf.achieved(2e9, 1.0, None) == (pytest.approx(2e12), None)
    with pytest.raises(ValueError, match="p50_ms must be > 0"):
        rf.achieved(2e9, 0.0, 4.0)
    figures = rf.roofline_metrics("candidate", 2e9, 1.0, Peak(4.0, "test"))
    assert figures.metrics == {"benchmark.candidate.achieved_tflops": pytest.approx(2.0),
                               "benchmark.candidate.peak_tflops": 4.0,
                               "benchmark.candidate.pct_of_peak": pytest.approx(50.0)}
    assert figures.notes == ()
    unknown = rf.roofline_metrics("baseline", 2e9, 1.0, None)
    assert unknown.metrics == {"benchmark.baseline.achieved_tflops": pytest.approx(2.0)} and unknown.notes == ()


def test_a_rate_above_the_peak_is_reported_and_explained():
    figures = rf.roofline_metrics("baseline", 2e9, 1.0, Peak(0.5, "benchmark.peak_tflops"))
    assert figures.metrics["benchmark.baseline.pct_of_peak"] == pytest.approx(400.0)
    assert len(figures.notes) == 1 and "set benchmark.peak_tflops" in figures.notes[0]


@pytest.mark.parametrize(("name", "precision", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 80GB HBM3", "float32", 66.9),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),
    ("NVIDIA H100 NVL", "int8", 1670.5),
    ("NVIDIA H200", "tf32", 494.7),
    ("NVIDIA H200 NVL", "bfloat16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "float32", 19.5),
    ("NVIDIA A100 80GB PCIe", "bfloat16", 312.0),
])
def test_known_gpu_peaks_are_the_dense_datasheet_figures(name, precision, tflops):
    peak = rf.known_peak(name, precision)
    assert peak is not None and peak.tflops == tflops and precision in peak.source


@pytest.mark.parametrize(("name", "precision"), [
    ("Intel(R) Xeon(R) Platinum 8480+", "float32"),        # CPUs: configure benchmark.peak_tflops
    ("NVIDIA GH200 480GB", "bfloat16"),                    # unlisted: no guess
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bfloat16"),     # a slice of the GPU, not its peak
    ("NVIDIA A100-SXM4-80GB", "float8"),                   # a precision the GPU lacks
])
def test_unknown_devices_have_no_peak(name, precision):
    assert rf.known_peak(name, precision) is None


def test_a_configured_peak_wins_over_the_table():
    assert ProfileConfig(peak_tflops=1.5).peak("Intel Xeon", "float32") == Peak(1.5, "benchmark.peak_tflops")
    assert ProfileConfig().peak("NVIDIA H100 80GB HBM3", "bfloat16").tflops == 989.4


def test_the_baselines_precision_follows_its_dtype_and_the_float32_matmul_setting():
    assert rf.compute_precision(None, "float32") == "float32"
    assert rf.compute_precision(None, "float32", "high") == "tf32"
    assert rf.compute_precision("none", "torch.float32", "medium") == "bfloat16"
    assert rf.compute_precision(None, "bfloat16", "high") == "bfloat16"
    assert rf.compute_precision(None, "float8_e4m3fn") == "float8"


def test_the_candidates_precision_follows_its_quantize_recipe():
    assert rf.compute_precision("int8_weight_only", "float32") == "float32"
    assert rf.compute_precision("int8_dynamic", "float32") == "int8"
    assert rf.compute_precision("autocast_bf16", "float32", "high") == "bfloat16"
    assert rf.compute_precision("float8_dynamic", "bfloat16") == "float8"
    assert rf.compute_precision("my_plugin_recipe", "float32") is None


def test_every_shipped_quantize_recipe_has_a_precision():
    from tests.conftest import ROOT

    methods = {path.stem for path in (ROOT / "conf" / "quantize").glob("*.yaml")}
    assert methods and {m for m in methods if rf.compute_precision(m, "float32") is None} == set()


# --- torch.profiler ------------------------------------------------------------------------

def test_profile_pass_writes_the_op_table_and_a_chrome_trace(tmp_path, capfd):
    _, call = _linear_call()
    files = bp.profile_pass(call, calls=3, activities=["cpu"], out_dir=tmp_path / "profile")
    assert set(files) == {"profile_table", "trace"}
    table = files["profile_table"].read_text()
    assert "aten::addmm" in table and "sorted by self_cpu_time_total" in table
    trace = json.loads(files["trace"].read_text())
    assert any(event.get("name") == "aten::addmm" for event in trace["traceEvents"])
    assert sorted(p.name for p in files["trace"].parent.iterdir()) == ["profile_table.txt", "trace.json"]
    assert "profiler_start" not in capfd.readouterr().err   # kineto's chatter stays off the console


# --- config and plan-time checks -----------------------------------------------------------

@pytest.mark.parametrize(("data", "key"), [
    ({"profile_calls": 0}, "benchmark.profile_calls"),
    ({"profile_calls": 1000}, "benchmark.profile_calls"),
    ({"peak_tflops": -1.0}, "benchmark.peak_tflops"),
    ({"peak_tflops": math.nan}, "benchmark.peak_tflops"),
    ({"profile_activities": []}, "benchmark.profile_activities"),
    ({"profile_activities": ["cpu", "cpu"]}, "benchmark.profile_activities"),
    ({"profile_activities": ["gpu"]}, "benchmark.profile_activities.0"),
])
def test_bad_values_name_their_key(data, key):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Stage:
        benchmark: ProfileConfig

    with pytest.raises(ConfigError) as caught:
        typed.build(Stage, {"benchmark": data})
    assert [p.key for p in caught.value.problems] == [key]


def test_activities_given_as_text_are_checked_when_built_directly():
    assert ProfileConfig(profile_activities=["cpu", "cuda"]).profile_activities == (Activity.CPU, Activity.CUDA)
    with pytest.raises(ConfigError, match="profile_activities: found 'gpu'; expected one of 'cpu', 'cuda'"):
        ProfileConfig(profile_activities=["gpu"])


def test_the_config_round_trips():
    config = ProfileConfig(profile=True, profile_activities=("cpu",), peak_tflops=2.0, profile_calls=3)
    plain = typed.to_plain(config)
    assert plain["profile_activities"] == ["cpu"]
    assert typed.build(ProfileConfig, plain) == config


def test_activities_default_to_the_devices_own():
    assert ProfileConfig().activities_on("cpu") == (Activity.CPU,)
    assert ProfileConfig().activities_on("cuda") == (Activity.CPU, Activity.CUDA)
    assert ProfileConfig(profile_activities=["cpu"]).activities_on("cuda") == (Activity.CPU,)


def test_a_cuda_activity_on_a_cpu_device_is_a_plan_time_problem():
    problems = ProfileConfig(profile=True, profile_activities=["cpu", "cuda"]).problems("cpu")
    assert [(p.key, p.found) for p in problems] == [("benchmark.profile_activities", ["cpu", "cuda"])]
    assert "profile_activities=[cpu]" in problems[0].hint and "device=cuda" in problems[0].hint
    assert ProfileConfig(profile=False, profile_activities=["cuda"]).problems("cpu") == []   # not profiling
    assert ProfileConfig(profile=True).problems("cpu") == []


def test_a_profiler_without_cuda_support_is_a_plan_time_problem_on_cuda(monkeypatch):
    monkeypatch.setattr(bp, "_profiler_records_cuda", lambda: False)
    problems = ProfileConfig(profile=True).problems("cuda")   # null: the device's own, cuda included
    assert [(p.key, p.found) for p in problems] == [("benchmark.profile_activities", None)]
    assert "CUPTI" in problems[0].hint and "profile_activities=[cpu]" in problems[0].hint
    assert ProfileConfig(profile=True, profile_activities=["cpu"]).problems("cuda") == []


def test_plots_without_matplotlib_is_a_plan_time_problem(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    problems = ProfileConfig(plots=True).problems("cpu")
    assert [p.key for p in problems] == ["benchmark.plots"] and "benchmark.plots=false" in problems[0].hint
    assert ProfileConfig(plots=False).problems("cpu") == []


# --- CUDA ----------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_memory_pass_reports_the_allocators_peaks():
    model = torch.nn.Linear(64, 10).cuda().eval()
    inputs = torch.randn(8, 64, device="cuda")
    model(inputs)   # warm, as after timing: cuBLAS's workspace is allocated on the first matmul
    small = bp.memory_pass(lambda: model(inputs), "cuda", "baseline").metrics
    big = bp.memory_pass(lambda: torch.ones(BIG_MB * 2**20 // 4, device="cuda").sum(), "cuda:0", "candidate").metrics
    assert big["benchmark.candidate.cuda_peak_allocated_rise_mb"] >= BIG_MB * 2**20 / 1e6
    assert big["benchmark.candidate.cuda_peak_reserved_mb"] >= big["benchmark.candidate.cuda_peak_allocated_rise_mb"]
    assert small["benchmark.baseline.cuda_peak_allocated_rise_mb"] < 1
    assert small["benchmark.baseline.peak_rss_mb"] > 0


@pytest.mark.cuda
def test_cuda_profile_sorts_by_gpu_time(tmp_path):
    model = torch.nn.Linear(256, 256).cuda().eval()
    inputs = torch.randn(64, 256, device="cuda")
    files = bp.profile_pass(lambda: model(inputs), 3, ProfileConfig().activities_on("cuda"), tmp_path)
    table = files["profile_table"].read_text()
    assert "sorted by self_device_time_total" in table and "CUDA" in table
    assert json.loads(files["trace"].read_text())["traceEvents"]
