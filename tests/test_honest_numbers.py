"""Numbers ptflow must not report without comment: a task metric on data it cannot score,
timings too noisy to trust, and a thread count that oversubscribes the machine."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from ptflow import device, fidelity, measure
from ptflow.artifact import Artifact, Form
from ptflow.data import Split, make_batches
from ptflow.device import DeviceConfig
from ptflow.errors import ConfigError, InputError
from ptflow.stage import RunContext
from ptflow.accuracy import AccuracyConfig
from ptflow.stages.benchmark import BenchmarkConfig, BenchmarkStage, BenchmarkStageConfig, stability
from ptflow.stages.validate import ValidateConfig, ValidateStage

ROWS, FEATURES, CLASSES = 6, 4, 3


class Emit(nn.Module):
    """A model whose task output is whatever `shape_fn(inputs)` builds: any shape on demand."""

    def __init__(self, shape_fn):
        super().__init__()
        self.shape_fn = shape_fn
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shape_fn(x) * self.scale


def class_scores(x: torch.Tensor) -> torch.Tensor:
    return x[:, :CLASSES]


class Context:
    """A RunContext whose warnings are kept, like the job's console and tags."""

    def __init__(self, run_dir: Path):
        self.warnings: list[tuple[str, str]] = []
        self.ctx = RunContext(run_dir, "cpu", 0, "0" * 64, {"threads": 2}, lambda it, **_: it,
                              warn=lambda key, message: self.warnings.append((key, message)))


def _artifact(shape_fn, targets, metric: str | None = "top1_accuracy", batch_size: int = ROWS) -> Artifact:
    inputs = torch.randn(len(targets) if targets is not None else ROWS, FEATURES,
                         generator=torch.Generator().manual_seed(0))
    batches = make_batches(Split(inputs, targets), batch_size)
    model = Emit(shape_fn)
    return Artifact(model=model, form=Form.EAGER, module=model, inputs=batches[0].inputs.spec(),
                    batches=batches, device="cpu", dtype="float32", task_metric=metric)


def _validate(artifact: Artifact, tmp_path: Path) -> Artifact:
    return ValidateStage(ValidateConfig()).run(artifact, Context(tmp_path).ctx)


LABELS = torch.tensor([0, 1, 2, 1, 0, 2])

# (case, task output from inputs, targets, substrings the error must contain)
BAD_METRIC_INPUTS = [
    ("float targets", class_scores, LABELS.float(), ["float32", "integer class ids"]),
    ("bool targets", class_scores, LABELS > 0, ["bool", "integer class ids"]),
    ("labels >= classes", class_scores, LABELS + 1, ["labels span 1..3", "3 classes", "0..2"]),
    ("negative labels", class_scores, LABELS - 1, ["labels span -1..1", "3 classes"]),
    ("1-D output", lambda x: x[:, 0], LABELS, ["shape (6,)", "(batch, classes)"]),
    ("3-D output", lambda x: x[:, :4].reshape(ROWS, 2, 2), LABELS, ["shape (6, 2, 2)", "(batch, classes)"]),
    ("(batch, 1) output", lambda x: x[:, :1], LABELS, ["shape (6, 1)", "classes >= 2"]),
    ("targets (batch, 2)", class_scores, torch.stack([LABELS, LABELS], 1), ["shape (6, 2)", "shape (6,)"]),
]


@pytest.mark.parametrize("case, shape_fn, targets, needles", BAD_METRIC_INPUTS, ids=[c[0] for c in BAD_METRIC_INPUTS])
def test_a_metric_that_cannot_score_the_data_stops_validate(tmp_path, case, shape_fn, targets, needles):
    with pytest.raises(InputError) as caught:
        _validate(_artifact(shape_fn, targets), tmp_path)
    message = str(caught.value)
    for needle in ["data.metric='top1_accuracy'", "data.metric=null", "data builder", *needles]:
        assert needle in message, message


def test_integer_labels_within_the_classes_are_scored(tmp_path):
    for dtype in (torch.int64, torch.int32, torch.uint8):
        validated = _validate(_artifact(class_scores, LABELS.to(dtype)), tmp_path)
        assert 0.0 <= validated.metrics["validate.top1_accuracy"] <= 1.0


def test_every_eval_batch_is_checked_not_only_the_first(tmp_path):
    targets = torch.tensor([0, 1, 2, 1, 0, 2, 0, 1, 2, 1, 0, 7])   # the bad label is in the third batch
    with pytest.raises(InputError, match=r"eval batch 2: labels span 0\.\.7 but the task output has 3"):
        _validate(_artifact(class_scores, targets, batch_size=4), tmp_path)


def test_missing_targets_name_data_metric(tmp_path):
    with pytest.raises(InputError, match=r"data.metric='top1_accuracy' needs targets.*data.metric=null"):
        _validate(_artifact(class_scores, None), tmp_path)


def test_without_a_metric_nothing_is_checked(tmp_path):
    validated = _validate(_artifact(lambda x: x[:, 0], LABELS.float(), metric=None), tmp_path)
    assert "validate.top1_accuracy" not in validated.metrics


def test_a_registered_metric_brings_its_own_check(tmp_path):
    @fidelity.register_metric("always_refuses_for_test", check=lambda output, target: ["no data suits me"])
    def always_refuses(outputs, targets):
        raise AssertionError("the check must stop the run before the metric runs")

    try:
        with pytest.raises(InputError, match="data.metric='always_refuses_for_test' cannot score eval "
                                             "batch 0: no data suits me"):
            _validate(_artifact(class_scores, LABELS, metric="always_refuses_for_test"), tmp_path)
    finally:
        fidelity._METRICS.pop("always_refuses_for_test")


def test_a_metric_cannot_be_registered_without_a_check():
    with pytest.raises(TypeError):
        fidelity.register_metric("unchecked_for_test")


@pytest.mark.parametrize("shape", [(ROWS,), (ROWS, 1), (ROWS, 2, 3)])
def test_top1_agreement_only_for_class_scores(shape):
    task = [torch.randn(shape)]
    leaves = [(("output", task[0]),)]
    result = fidelity.agreement(leaves, leaves, task, task)
    assert "top1_agreement" not in result and result["max_abs_error"] == 0.0


def test_top1_agreement_for_class_scores():
    base = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cand = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    result = fidelity.agreement([(("output", base),)], [(("output", cand),)], [base], [cand])
    assert result["top1_agreement"] == 0.75


# --- noisy timings -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -0.1, math.nan])
def test_max_dispersion_must_be_positive(value):
    with pytest.raises(ConfigError, match="max_dispersion"):
        BenchmarkConfig(max_dispersion=value)


def _stats(center_ms: float, spread: float, n: int = 100) -> measure.LatencyStats:
    rng = random.Random(int(center_ms * 1000 + spread * 100))
    return measure.summarize([center_ms * (1 + rng.uniform(-spread, spread)) / 1e3 for _ in range(n)])


def test_steady_samples_are_stable():
    unstable, warning = stability({"baseline": _stats(4.0, 0.02), "candidate": _stats(3.0, 0.02)}, 0.25)
    assert not unstable and warning is None


def test_noisy_samples_are_unstable_and_the_warning_says_what_to_do():
    stats = {"baseline": _stats(4.0, 0.02), "candidate": _stats(3.0, 0.9)}
    unstable, warning = stability(stats, 0.25, threads=2)
    assert unstable
    assert f"candidate {stats['candidate'].dispersion:.2f}" in warning and "baseline" not in warning
    for needle in ("benchmark.max_dispersion=0.25", "quieter machine", "device.threads=1 (now 2)",
                   "benchmark.iters"):
        assert needle in warning
    _, warning = stability(stats, 0.25, threads=1)
    assert "device.threads" not in warning and "quieter machine" in warning   # no advice already taken


def _benchmarked(tmp_path: Path, samples_ms: dict[str, list[float]], monkeypatch) -> tuple[Artifact, Context]:
    monkeypatch.setattr(measure, "paired_latency",
                        lambda fns, *args, **kwargs: {k: [v / 1e3 for v in samples_ms[k]] for k in fns})
    context = Context(tmp_path)
    validated = ValidateStage(ValidateConfig()).run(_artifact(class_scores, LABELS), context.ctx)
    stage = BenchmarkStage(BenchmarkStageConfig(BenchmarkConfig(warmup=0, iters=10, rounds=1, fidelity=False),
                                               AccuracyConfig()))
    return stage.run(validated, context.ctx), context


def test_the_benchmark_marks_noisy_timings_unstable(tmp_path, monkeypatch):
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]
    noisy = [1.0, 3.0, 0.5, 2.0, 1.0, 4.0, 0.6, 2.5, 1.0, 3.5]
    artifact, context = _benchmarked(tmp_path, {"baseline": steady, "candidate": noisy}, monkeypatch)
    m = artifact.metrics
    assert m["benchmark.unstable"] == 1.0
    assert m["benchmark.baseline.dispersion"] < 0.25 < m["benchmark.candidate.dispersion"]
    assert m["benchmark.candidate.iqr_ms"] == pytest.approx(measure.percentile(noisy, 75)
                                                            - measure.percentile(noisy, 25))
    ((key, message),) = context.warnings
    assert key == "benchmark.unstable" and "candidate" in message


def test_the_benchmark_keeps_quiet_about_steady_timings(tmp_path, monkeypatch):
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]
    artifact, context = _benchmarked(tmp_path, {"baseline": steady, "candidate": steady}, monkeypatch)
    assert artifact.metrics["benchmark.unstable"] == 0.0 and context.warnings == []


# --- threads -------------------------------------------------------------------------------

@pytest.mark.parametrize("quota, period, cpus", [("max", "100000", None), ("-1", "100000", None),
                                                 ("150000", "100000", 2), ("50000", "100000", 1),
                                                 ("400000", "100000", 4), ("", "", None)])
def test_cpu_quota(quota, period, cpus):
    assert device.cpu_quota(quota, period) == cpus


def test_cgroup_v2_cpu_max(tmp_path):
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert device.cgroup_cpu_limit(tmp_path) == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert device.cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(tmp_path, folder):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / folder / "cpu.cfs_period_us").write_text("100000\n")
    assert device.cgroup_cpu_limit(tmp_path) == 3
    (tmp_path / folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert device.cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert device.cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize("visible, quota, usable", [(8, None, 8), (8, 3, 3), (2, 4, 2), (None, None, 1), (0, None, 1)])
def test_usable_cores(visible, quota, usable):
    assert device.usable_cores(visible, quota) == usable


def test_usable_cores_here_reads_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert device.usable_cores_here(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert device.usable_cores_here(tmp_path) == 3


def test_usable_cores_here_without_affinity_counts_cpus(tmp_path, monkeypatch):
    monkeypatch.delattr(device.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 6)
    assert device.usable_cores_here(tmp_path) == 6


@pytest.mark.parametrize("usable, threads", [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_null_threads_mean_half_the_usable_cores(usable, threads):
    assert device.default_threads(usable) == threads
    assert device.thread_count(DeviceConfig(threads=None), usable) == (threads, [])


def test_explicit_threads_within_the_usable_cores_are_kept_silently():
    assert device.thread_count(DeviceConfig(threads=2), 2) == (2, [])


def test_more_threads_than_usable_cores_warn():
    threads, warnings = device.thread_count(DeviceConfig(threads=8), 2)
    ((key, message),) = warnings
    assert threads == 8 and key == "device.threads"
    for needle in ("device.threads=8", "the 2 core(s)", "oversubscribe", "erratic"):
        assert needle in message


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_puts_the_default_in_force_and_returns_warnings(monkeypatch, torch_threads):
    monkeypatch.setattr(device, "usable_cores_here", lambda: 4)
    assert device.apply(DeviceConfig()) == []
    assert torch.get_num_threads() == 2 and device.capture(DeviceConfig())["threads"] == 2
    monkeypatch.setattr(device, "usable_cores_here", lambda: 1)
    warnings = device.apply(DeviceConfig(threads=3))
    assert [key for key, _ in warnings] == ["device.threads"] and torch.get_num_threads() == 3
