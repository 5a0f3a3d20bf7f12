"""ptflow behaves as an MLflow client should: MLflow's environment variables, unique and
truthful run names and tags, sweep ids, datasets, system metrics, a summary tag and
metric keys that MLflow's UI groups by stage.

Mostly in-process: one small pipeline run per module (``tracked``), plans built without
running, and one real CLI sweep.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ptflow.app import job
from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.files import CLAIM_FILE, claim_dir
from ptflow.runs.naming import JobInfo, run_name, run_tags, sweep_id
from ptflow.runs.record import RunRecord
from ptflow.runs.summary import one_line
from ptflow.runs.tracker import MlflowTracker, mlflow_metric_key
from ptflow.runs.tracking import TrackingConfig
from tests.conftest import compose, make_context, run_cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ("benchmark=quick", "benchmark.iters=20", "benchmark.warmup=2", "device.threads=1")
NO_QUANTIZE = "pipeline=[load,validate,benchmark]"


@pytest.fixture(scope="module", autouse=True)
def _no_mlflow_variables():
    """The developer's own MLFLOW_TRACKING_URI must not receive these tests' runs."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
            patch.delenv(name, raising=False)
        yield


def _plan(*overrides: str):
    config, choices = compose(*overrides)
    return compile_plan(config, choices)


def _run(tmp_path: Path, *overrides: str, run_dir: str = "runs/12-00-00") -> RunRecord:
    """One pipeline run in this process, as a Hydra job would do it, tracked into tmp_path."""
    overrides = (*SMALL, f"outputs_dir={tmp_path / 'outputs'}", *overrides)
    config, choices = compose(*overrides)
    where = tmp_path / run_dir
    return job.run(config, "{}\n", choices, list(overrides), where,
                   JobInfo(overrides=overrides, run_dir=str(where)))


def _client(record: RunRecord):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=record.tracking.uri)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """(record, MLflow run) of the default recipe over load, validate, quantize, benchmark."""
    record = _run(tmp_path_factory.mktemp("tracked"), "pipeline=[load,validate,quantize,benchmark]")
    assert record.status == "FINISHED", record.error
    return record, _client(record).get_run(record.tracking.run_id)


# -- 1. MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME -----------------------------------------

def test_mlflow_variables_sit_between_explicit_config_and_the_defaults(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    default = _plan().settings.tracking
    assert (default.uri, default.experiment) == (None, "ptflow")       # sqlite under outputs_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/from-env/m.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    from_env = _plan().settings.tracking
    assert (from_env.uri, from_env.experiment) == ("sqlite:////tmp/from-env/m.db", "from-env")

    given = _plan("tracking.uri=http://127.0.0.1:5000", "tracking.experiment=given").settings.tracking
    assert (given.uri, given.experiment) == ("http://127.0.0.1:5000", "given")
    assert not _plan("tracking=none").settings.tracking.enabled

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "")
    with pytest.raises(Exception, match="MLFLOW_EXPERIMENT_NAME is set but empty"):
        _plan()


def test_mlflow_enable_system_metrics_logging_is_honoured_like_the_key(monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    assert _plan().settings.tracking.system_metrics is False
    for text, expected in (("true", True), ("1", True), ("false", False), ("0", False)):
        monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", text)
        assert _plan().settings.tracking.system_metrics is expected, text
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    assert _plan("tracking.system_metrics=false").settings.tracking.system_metrics is False   # the key wins
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "maybe")
    with pytest.raises(Exception, match="tracking.system_metrics"):
        _plan()


def test_the_mlflow_yaml_lists_every_tracking_field():
    listed = yaml.safe_load((ROOT / "conf" / "tracking" / "mlflow.yaml").read_text())
    assert set(listed) == {f.name for f in fields(TrackingConfig)}
    assert listed["system_metrics"] == "${oc.env:MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING,false}"


# -- 2. names and tags say what ran, and tell runs apart ------------------------------------

def test_sweep_jobs_get_distinct_names_that_say_what_varied(tmp_path):
    names = [run_name(_plan(f"seed={n}", "benchmark=quick"),
                      JobInfo(str(tmp_path / "14-05-33"), n, (f"seed={n}", "benchmark=quick")))
             for n in range(3)]
    assert names == [f"digits_mlp-int8_dynamic-eager seed={n} @14-05-33#{n}" for n in range(3)]
    single = JobInfo(overrides=("benchmark.iters=50", "tracking.experiment=x", "export.dir=/tmp/e"),
                     run_dir=str(tmp_path / "14-05-33-1"))
    assert run_name(_plan("benchmark.iters=50", "experiment=latency_only"), single) == \
        "digits_mlp-int8_dynamic-eager benchmark.iters=50 @14-05-33-1"   # no export stage: export.dir is not named


def test_a_run_name_the_user_gave_is_kept_even_across_a_sweep(tmp_path):
    plan = _plan("tracking.run_name=my run")
    assert {run_name(plan, JobInfo(str(tmp_path), n, ("seed=1",))) for n in range(3)} == {"my run"}


def test_a_pipeline_without_quantize_is_neither_named_nor_tagged_for_it(tmp_path):
    plan = _plan(NO_QUANTIZE, "experiment=latency_only", "quantize=int8_dynamic")
    record = RunRecord(str(tmp_path), process="host:1")
    assert run_name(plan, JobInfo(overrides=(NO_QUANTIZE, "quantize.method=int8_dynamic"))) == "digits_mlp"
    tags = run_tags(plan, JobInfo(), record)
    assert tags["pipeline"] == "load,validate,benchmark"
    assert {"model": "digits_mlp", "data": "digits", "validate": "default", "benchmark": "default",
            "device": "cpu", "experiment": "latency_only"}.items() <= tags.items()
    assert not {"quantize", "compile", "export", "tracking"} & set(tags)
    assert not any(k.startswith("hydra") for k in tags)


def test_job_info_comes_from_hydra_in_both_modes():
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    def hydra_cfg(mode):
        task = OmegaConf.create(["seed=2"])    # as Hydra holds it: a ListConfig
        return SimpleNamespace(mode=mode, sweep=SimpleNamespace(dir="/abs/multirun/14-05-33"),
                               job=SimpleNamespace(num=2), overrides=SimpleNamespace(task=task),
                               runtime=SimpleNamespace(output_dir="/abs/multirun/14-05-33/2"))

    assert JobInfo.from_hydra(hydra_cfg(RunMode.MULTIRUN)) == \
        JobInfo("/abs/multirun/14-05-33", 2, ("seed=2",), "/abs/multirun/14-05-33/2")
    assert JobInfo.from_hydra(hydra_cfg(RunMode.RUN)) == \
        JobInfo(None, None, ("seed=2",), "/abs/multirun/14-05-33/2")


# -- 3. a sweep has an id ------------------------------------------------------------------

def test_the_sweep_id_is_the_claim_of_the_sweep_dir(tmp_path):
    plan = _plan()
    record = RunRecord(str(tmp_path / "job"), process="host:1")
    ids = []
    for sweep in (claim_dir(tmp_path / "14-05-33"), claim_dir(tmp_path / "14-05-33")):   # the 2nd gets -1
        per_job = {run_tags(plan, JobInfo(str(sweep), n), record)["ptflow.sweep_id"] for n in range(2)}
        assert len(per_job) == 1
        ids.append(per_job.pop())
        assert ids[-1] == (sweep / CLAIM_FILE).read_text().split()[1]
    assert ids[0] != ids[1]
    unclaimed = tmp_path / "by-hand"
    assert sweep_id(str(unclaimed)) == sweep_id(str(unclaimed)) and len(sweep_id(str(unclaimed))) == 32


def test_a_cli_sweep_into_mlflows_own_variables_is_told_apart(tmp_path, monkeypatch):
    """One real sweep: MLFLOW_* variables pick the store and experiment; names are unique."""
    store = tmp_path / "elsewhere" / "m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    result = run_cli(tmp_path, "-m", "seed=0,1,2", *SMALL, NO_QUANTIZE)
    assert result.code == 0, result.stderr
    assert not (result.outputs / "mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = [r for r in client.search_runs([client.get_experiment_by_name("from-env").experiment_id])
            if r.data.tags.get("ptflow.sweep_parent") != "true"]   # the sweep's parent run is not a job
    (sweep_dir,) = result.outputs.glob("multirun/*/*")
    names = {int(r.data.tags["ptflow.job_num"]): r.info.run_name for r in runs}
    assert len(set(names.values())) == 3
    for number, name in names.items():
        # "digits_mlp <the job's plain overrides, seed=N among them> @<sweep dir>#N"
        assert name.startswith("digits_mlp ") and name.endswith(f" @{sweep_dir.name}#{number}"), name
        assert f" seed={number} " in name
    claim = (sweep_dir / CLAIM_FILE).read_text().split()[1]
    assert {r.data.tags["ptflow.sweep_id"] for r in runs} == {claim}
    assert {r.data.tags["pipeline"] for r in runs} == {"load,validate,benchmark"}


# -- 4. the eval data is an MLflow dataset ---------------------------------------------------

def test_the_eval_data_is_logged_as_a_dataset_with_source_digest_and_schema(tracked):
    from mlflow.data.schema import TensorDatasetSchema

    record, run = tracked
    (described,) = record.datasets
    assert described["rows"] == 450 and len(described["digest"]) == 64
    assert described["source"] == "ptflow.zoo.digits.digits_split(split='test', test_size=0.25, seed=0)"
    (logged,) = run.inputs.dataset_inputs
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "eval")]
    dataset = logged.dataset
    assert dataset.name == "digits_split" and described["digest"].startswith(dataset.digest)
    assert dataset.source_type == "code" and "digits_split(split='test'" in dataset.source
    schema = json.loads(dataset.schema)
    assert schema["mlflow_colspec"] == [{"name": "pixels", "type": "float32 (batch, 64)", "required": True},
                                        {"name": "targets", "type": "int64 (batch)", "required": True}]
    tensors = TensorDatasetSchema.from_dict(schema)          # MLflow's own tensor schema parses too
    assert tensors.features.inputs[0].shape == (-1, 64)
    assert json.loads(dataset.profile)["sha256"] == described["digest"]
    saved = json.loads((Path(record.run_dir) / "ptflow_result.json").read_text())
    assert saved["datasets"] == [described]


def test_the_digest_names_the_data_not_the_batching():
    from ptflow.core.artifact import DataContext
    from ptflow.inputs.data import make_batches
    from ptflow.inputs.dataset_info import describe_data
    from ptflow.zoo.digits import digits_split

    split, source = digits_split(), {"_target_": "ptflow.zoo.digits.digits_split"}
    digests = {describe_data(source, make_batches(split, size), ["pixels"], DataContext.EVAL).digest
               for size in (150, 7)}
    assert len(digests) == 1
    fewer = describe_data(source, make_batches(split, 150, max_batches=1), ["pixels"], DataContext.EVAL)
    assert fewer.digest not in digests and fewer.rows == 150


def test_relog_logs_the_dataset_once_and_into_another_store(tracked, tmp_path):
    record, run = tracked
    same = RunRecord.load(Path(record.run_dir))
    MlflowTracker(TrackingConfig(uri=same.tracking.uri), tmp_path, same).replay()
    again = _client(record).get_run(run.info.run_id)
    assert len(again.inputs.dataset_inputs) == 1
    assert set(again.data.metrics) == set(run.data.metrics)
    assert all(len(_client(record).get_metric_history(run.info.run_id, k)) == 1 for k in run.data.metrics)

    other = RunRecord.load(Path(record.run_dir))
    other.tracking.run_id = None
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    tracker = MlflowTracker(TrackingConfig(uri=uri), tmp_path, other)
    tracker.replay()
    assert tracker.ok
    copied = tracker.client.get_run(other.tracking.run_id)
    assert [i.dataset.digest for i in copied.inputs.dataset_inputs] == [run.inputs.dataset_inputs[0].dataset.digest]
    assert set(copied.data.metrics) == set(run.data.metrics)
    assert copied.data.tags["ptflow.summary"] == run.data.tags["ptflow.summary"]


# -- 5. system metrics: off by default, never while timing ----------------------------------

def test_system_metrics_are_off_by_default(tracked):
    record, run = tracked
    assert TrackingConfig().system_metrics is False
    assert not any(k.startswith("system/") for k in run.data.metrics)


class _Clock:
    """A hook that notes when the benchmark stage starts or ends, and what threads live then;
    `wait_s` before it starts gives the sampler time to sample (a warm process loads fast)."""

    def __init__(self, event: str, wait_s: float = 0.0):
        self.event, self.wait_s, self.at, self.monitors = event, wait_s, None, None

    def _note(self, name: str, event: str) -> None:
        if name == "benchmark" and event == self.event:
            time.sleep(self.wait_s)
            self.at = time.time() * 1000
            self.monitors = [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]

    def before_stage(self, planned, artifact):
        self._note(planned.name, "before")

    def after_stage(self, record, artifact):
        self._note(record.name, "after")


def test_system_metrics_sample_around_the_benchmark_but_never_during_it(tmp_path):
    pytest.importorskip("psutil")
    plan = _plan(*SMALL, "benchmark.iters=60", NO_QUANTIZE, f"outputs_dir={tmp_path}",
                 "tracking.system_metrics=true", "tracking.system_metrics_interval_s=0.1")
    record = RunRecord(str(tmp_path / "run"), process="host:1")
    tracker = MlflowTracker(plan.settings.tracking, tmp_path, record)
    loading = _Clock("before", wait_s=0.5)
    started, ended = _Clock("before"), _Clock("after")   # around the tracker: see it paused, then resume
    engine.run(plan, make_context(tmp_path / "run", plan), [record, loading, ended, tracker, started])
    record.end("FINISHED", 0)
    tracker.end()
    assert loading.monitors and started.monitors == []              # sampling, then paused for the stage
    assert ended.at - started.at > 300                              # long enough for 3 samples
    history = tracker.client.get_metric_history(record.tracking.run_id, "system/cpu_utilization_percentage")
    stamps = [m.timestamp for m in history]
    assert any(t < started.at for t in stamps)                       # it sampled before the benchmark
    assert not [t for t in stamps if started.at <= t <= ended.at]    # and not while it timed
    assert [m.step for m in history] == list(range(len(history)))    # resumed steps, no restart at 0


def test_system_metrics_without_psutil_warn_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psutil", None)
    record = _run(tmp_path, NO_QUANTIZE, "tracking.system_metrics=true")
    assert record.status == "FINISHED" and "psutil" in record.warnings["tracking.system_metrics"]
    assert "ptflow: warning: tracking.system_metrics=true needs psutil" in capsys.readouterr().err
    run = _client(record).get_run(record.tracking.run_id)
    assert "psutil" in run.data.tags["ptflow.warning.tracking.system_metrics"]
    assert not any(k.startswith("system/") for k in run.data.metrics)


# -- 6. the runs table gets a one-line summary -----------------------------------------------

def test_a_summary_tag_says_recipe_latency_speedup_and_accuracy(tracked):
    record, run = tracked
    assert run.data.tags["ptflow.summary"] == one_line(record.summary)
    summary = {"choices": {"model": "digits_mlp", "quantize": "int8_dynamic", "compile": "eager"},
               "stages_s": {"load": 1, "quantize": 1, "compile": 1, "benchmark": 1},
               "latency_ms": {"optimized": {"p50": 1.5374}}, "speedup_p50": 2.181,
               "task_metric": {"name": "top1_accuracy", "delta": -0.00222}}
    assert one_line(summary) == "int8_dynamic+eager · p50 1.537 ms · 2.18x · top1_accuracy -0.0022"
    del summary["stages_s"]["quantize"], summary["stages_s"]["compile"]
    assert one_line({**summary, "unstable": True}).startswith("as loaded · ")
    assert one_line({**summary, "unstable": True}).endswith(" · UNSTABLE timings")


# -- 7. metric keys: '/' after the stage, for MLflow's chart sections -------------------------

def test_metric_keys_group_by_stage_in_mlflow_only(tracked):
    record, run = tracked
    assert mlflow_metric_key("benchmark.speedup_p50") == "benchmark/speedup_p50"
    assert mlflow_metric_key("benchmark.candidate.p50_ms") == "benchmark/candidate.p50_ms"
    assert set(run.data.metrics) == {mlflow_metric_key(k) for k in record.metrics}
    assert run.data.metrics["benchmark/speedup_p50"] == pytest.approx(record.metrics["benchmark.speedup_p50"])
    assert {k.split("/")[0] for k in run.data.metrics} == {"load", "validate", "quantize", "benchmark", "accuracy",
                                                         "cache"}   # cache/load_hit, cache/validate_hit
    assert all("/" not in k for k in record.metrics)                 # ptflow's own record keeps dots
