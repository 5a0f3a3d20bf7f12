"""benchmark.repeats: the timing again in fresh processes, one interval over all of them,
through the real command line (each worker a real `python` process rebuilding the run)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ptflow.core.errors import ConfigError
from ptflow.core.stage import RunContext
from ptflow.decide.accuracy import AccuracyConfig
from ptflow.stages.benchmark.stage import BenchmarkConfig, BenchmarkStage, BenchmarkStageConfig
from tests.conftest import mlflow_runs

REPEATS_RUN = ("experiment=latency_only", "benchmark=quick", "benchmark.repeats=3", "benchmark.memory=false",
               "benchmark.flops=false", "benchmark.batch_sizes=[1,8]")


BUILT_ONCE = '''
from pathlib import Path

from ptflow.zoo.digits import DigitsMLP


def build(marker, **kwargs):
    """The digits MLP, built by the first process only: a repeat worker rebuilding the run
    finds the marker and fails, as a model that cannot be rebuilt elsewhere would."""
    if Path(marker).exists():
        raise RuntimeError(f"{marker} exists: this model is built once")
    Path(marker).write_text("built")
    return DigitsMLP(**kwargs)
'''


def _metrics(run) -> dict[str, float]:
    """MLflow keys ('benchmark/repeats') under ptflow's names ('benchmark.repeats')."""
    return {key.replace("/", ".", 1): value for key, value in run.data.metrics.items()}


def _repeat_workers_in(cwd: Path) -> list[int]:
    psutil = pytest.importorskip("psutil")
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "ptflow.app.repeat_worker" in cmdline and process.info.get("cwd") == str(cwd):
            found.append(process.pid)
    return found


def test_repeats_time_in_fresh_processes_and_report_one_interval_over_all(ptflow, tmp_path):
    result = ptflow(*REPEATS_RUN)
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    m = _metrics(run)
    assert m["benchmark.repeats"] == 3
    assert run.data.tags["benchmark.ci_scope"] == "3 processes"
    per_process = [m[f"benchmark.repeat.{i}.speedup_p50"] for i in (1, 2, 3)]
    assert m["benchmark.speedup_p50"] == pytest.approx(math.exp(sum(map(math.log, per_process)) / 3))
    assert m["benchmark.speedup_ci_low"] < m["benchmark.speedup_p50"] < m["benchmark.speedup_ci_high"]
    for key in ("speedup_p50", "speedup_ci_low", "speedup_ci_high"):   # the headline is the first size's
        assert m[f"benchmark.{key}"] == m[f"benchmark.bs1.{key}"] != m[f"benchmark.bs8.{key}"]
    for i in (1, 2, 3):
        assert m[f"benchmark.repeat.{i}.speedup_ci_low"] <= per_process[i - 1] <= m[f"benchmark.repeat.{i}.speedup_ci_high"]
        assert m[f"benchmark.repeat.{i}.baseline.p50_ms"] > 0 and m[f"benchmark.repeat.{i}.candidate.p50_ms"] > 0
    assert m["benchmark.repeat.2.startup_s"] > 0 and m["benchmark.repeat_startup_s"] > 0 and m["benchmark.repeats_s"] > 0
    assert m["benchmark.candidate.dispersion_repeats"] == m["benchmark.bs1.candidate.dispersion_repeats"]
    assert "benchmark.bs8.baseline.dispersion_repeats" in m
    assert "over 3 processes" in result.stdout
    run_dir = next(result.outputs.glob("runs/*/*"))
    samples = json.loads((run_dir / "benchmark" / "latency_samples.json").read_text())
    assert [r["repeat"] for r in samples["repeats"]] == [2, 3]
    for repeat in samples["repeats"]:
        assert [size["batch_size"] for size in repeat["sizes"]] == [1, 8]
        for size in repeat["sizes"]:
            assert set(size["samples_ms"]) == {"baseline", "candidate"} and len(size["samples_ms"]["candidate"]) >= 30
            value, low, high = size["speedup"]
            assert low <= value <= high
    assert sorted(p.name for p in (run_dir / "benchmark" / "repeats").iterdir()) == ["repeat2.log", "repeat3.log"]
    assert _repeat_workers_in(tmp_path) == []


@pytest.mark.slow
def test_a_worker_that_cannot_rebuild_is_a_warning_and_the_interval_says_what_it_covers(ptflow, tmp_path):
    (tmp_path / "built_once.py").write_text(BUILT_ONCE)
    result = ptflow(*REPEATS_RUN, "benchmark.repeats=2", "model.builder._target_=built_once.build",
                    f"+model.builder.marker={tmp_path / 'built'}")
    assert result.code == 0, result.stderr
    (run,) = mlflow_runs(result)
    assert _metrics(run)["benchmark.repeats"] == 1
    assert run.data.tags["benchmark.ci_scope"] == "one process"
    warning = run.data.tags["ptflow.warning.benchmark.repeat2"]
    assert "repeat 2 of 2 failed in its fresh process" in warning and "this model is built once" in warning
    assert "within one process" in result.stdout


def test_one_repeat_says_its_interval_covers_one_process(ptflow):
    result = ptflow("experiment=latency_only", "benchmark=quick", "tracking=none", "quantize=none")
    assert result.code == 0, result.stderr
    assert "within one process" in result.stdout
    summary = json.loads(next(result.outputs.glob("runs/*/*/summary.json")).read_text())
    assert summary["speedup_processes"] == 1


def test_repeats_without_the_job_runner_warn_and_time_here_only(tmp_path):
    warnings = []
    ctx = RunContext(tmp_path, "cpu", 0, "0" * 64, {}, lambda it, **_: it, lambda k, m: warnings.append((k, m)))
    stage = BenchmarkStage(BenchmarkStageConfig(BenchmarkConfig(repeats=3), AccuracyConfig()))
    assert stage._spawn_repeats(ctx) == []
    ((key, message),) = warnings
    assert key == "benchmark.repeats" and "timed in this process only" in message


@pytest.mark.parametrize("repeats", [0, 51])
def test_repeats_out_of_range_are_config_errors(repeats):
    with pytest.raises(ConfigError, match="repeats"):
        BenchmarkConfig(repeats=repeats)
