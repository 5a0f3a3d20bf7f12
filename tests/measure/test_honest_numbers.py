"""Numbers ptflow must not report without comment: a task metric on data it cannot score,
timings too noisy to trust, and a thread count that oversubscribes the machine."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ptflow.core.artifact import Artifact, Form
from ptflow.core.errors import ConfigError, InputError
from ptflow.core.stage import RunContext
from ptflow.decide import fidelity
from ptflow.decide.accuracy import AccuracyConfig
from ptflow.inputs.data import Split, make_batches
from ptflow.measure import device, protocol as measure, stats
from ptflow.measure.device import DeviceConfig
from ptflow.measure.stats import Stability
from ptflow.stages.benchmark.stage import BenchmarkConfig, BenchmarkStage, BenchmarkStageConfig, stability_warning
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

@pytest.mark.parametrize("key", ["max_dispersion", "invalid_dispersion"])
@pytest.mark.parametrize("value", [0, -0.1, math.nan])
def test_dispersion_limits_must_be_positive(key, value):
    with pytest.raises(ConfigError, match=key):
        BenchmarkConfig(**{key: value})


def test_the_warning_says_what_the_class_means_and_what_to_do():
    config = BenchmarkConfig()
    unstable = stability_warning(Stability.UNSTABLE, {"candidate": 0.15}, config, threads=2)
    for needle in ("timings are unstable", "candidate 0.15", "benchmark.max_dispersion=0.1", "quieter machine",
                   "device.threads=1 (now 2)"):
        assert needle in unstable
    invalid = stability_warning(Stability.INVALID, {"baseline": 0.4}, config, threads=1)
    for needle in ("timings are invalid", "baseline 0.40", "benchmark.invalid_dispersion=0.25",
                   "benchmark.stability=invalid", "not a measurement"):
        assert needle in invalid
    assert "device.threads" not in invalid and "quieter machine" in invalid   # no advice already taken


def _benchmarked(tmp_path: Path, samples_ms: dict[str, list[float]], monkeypatch,
                 **config) -> tuple[Artifact, Context]:
    """The benchmark stage with the protocol replaced by `samples_ms` (pair i = index i)."""
    def fake_measure(runs, now_ns, protocol, progress=None):
        warm = {role: measure.WarmUp(0.01, 3, 0.05, True, samples_ms[role][0] / 1e3, 1, ()) for role in runs}
        timed = measure.Timed({role: [v / 1e3 for v in samples_ms[role]] for role in runs}, tuple(runs), 1, 0.1, True)
        return warm, timed

    monkeypatch.setattr(measure, "measure", fake_measure)
    context = Context(tmp_path)
    validated = ValidateStage(ValidateConfig()).run(_artifact(class_scores, LABELS), context.ctx)
    stage = BenchmarkStage(BenchmarkStageConfig(BenchmarkConfig(**{"fidelity": False, "memory": False, "flops": False, **config}), AccuracyConfig()))
    return stage.run(validated, context.ctx), context


STEADY = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]


def test_the_benchmark_marks_noisy_timings_unstable(tmp_path, monkeypatch):
    wobbly = [1.0, 1.1, 0.9, 1.2, 1.0, 0.85, 1.0, 1.15, 0.95, 1.0]     # IQR/median ~0.15
    artifact, context = _benchmarked(tmp_path, {"baseline": STEADY, "candidate": wobbly}, monkeypatch)
    m = artifact.metrics
    assert m["benchmark.unstable"] == 1.0 and m["benchmark.invalid"] == 0.0
    assert artifact.tags["benchmark.stability"] == "unstable"
    assert m["benchmark.baseline.dispersion"] < 0.10 < m["benchmark.candidate.dispersion"] < 0.25
    assert m["benchmark.candidate.iqr_ms"] == pytest.approx(stats.percentile(wobbly, 75) - stats.percentile(wobbly, 25))
    ((key, message),) = context.warnings
    assert key == "benchmark.unstable" and "candidate" in message and "baseline" not in message


def test_the_benchmark_says_when_timings_are_no_measurement(tmp_path, monkeypatch):
    noisy = [1.0, 3.0, 0.5, 2.0, 1.0, 4.0, 0.6, 2.5, 1.0, 3.5]
    artifact, context = _benchmarked(tmp_path, {"baseline": STEADY, "candidate": noisy}, monkeypatch)
    assert artifact.metrics["benchmark.invalid"] == 1.0 and artifact.metrics["benchmark.unstable"] == 1.0
    assert artifact.tags["benchmark.stability"] == "invalid"
    ((key, message),) = context.warnings
    assert key == "benchmark.invalid" and "timings are invalid" in message


def test_the_benchmark_keeps_quiet_about_steady_timings(tmp_path, monkeypatch):
    artifact, context = _benchmarked(tmp_path, {"baseline": STEADY, "candidate": STEADY}, monkeypatch)
    m = artifact.metrics
    assert m["benchmark.unstable"] == 0.0 and m["benchmark.invalid"] == 0.0 and context.warnings == []
    assert artifact.tags["benchmark.stability"] == "stable"
    assert m["benchmark.speedup_ci_low"] <= m["benchmark.speedup_p50"] <= m["benchmark.speedup_ci_high"]
    assert m["benchmark.speedup_p50"] == pytest.approx(1.0)


def test_a_limit_can_be_moved_for_a_noisy_machine(tmp_path, monkeypatch):
    wobbly = [1.0, 1.1, 0.9, 1.2, 1.0, 0.85, 1.0, 1.15, 0.95, 1.0]
    artifact, context = _benchmarked(tmp_path, {"baseline": STEADY, "candidate": wobbly}, monkeypatch,
                                     max_dispersion=0.2)
    assert artifact.tags["benchmark.stability"] == "stable" and context.warnings == []


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
