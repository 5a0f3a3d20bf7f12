"""The run's description on the MLflow run page, its logged models' name, and the state
column of the sweep table: what each says for each way a run can end."""
from __future__ import annotations

from ptflow.app.sweep import state
from ptflow.runs import description
from ptflow.runs.record import RunRecord

SUMMARY = {"speedup_p50": 2.1834, "speedup_ci": [1.5412, 3.2101], "speedup_processes": 5,
           "task_metric": {"name": "top1_accuracy", "delta": -0.00222, "baseline": 0.98, "optimized": 0.9778},
           "accepted": True, "unstable": False, "invalid": False,
           "latency_ms": {"baseline": {"p50": 3.25678}, "optimized": {"p50": 1.49123}}}


def _record(status="FINISHED", summary=None, **fields) -> RunRecord:
    tags = {"recipe": "int8_static+inductor", "pipeline": "load,validate,quantize,compile,benchmark,export"}
    return RunRecord(run_dir="x", status=status, tags=tags, summary=summary or {}, **fields)


def test_a_finished_run_says_recipe_speedup_interval_delta_and_stability_rounded():
    text = description.ended(_record(summary=SUMMARY))
    head, p50 = text.split("\n\n")
    assert head == ("**int8_static+inductor** · speedup 2.18x [1.54, 3.21] over 5 processes · "
                    "top1_accuracy -0.0022 (accepted) · timings stable")
    assert p50 == "p50 baseline 3.257 ms, optimized 1.491 ms"


def test_rejected_invalid_and_one_process_runs_say_so():
    summary = {**SUMMARY, "accepted": False, "invalid": True, "speedup_processes": 1}
    head = description.ended(_record(summary=summary)).split("\n\n")[0]
    assert "within one process" in head and "(REJECTED by the accuracy gate)" in head
    assert head.endswith("timings invalid")
    assert state(summary) == "rejected"
    assert state({**SUMMARY, "invalid": True}) == "invalid"
    assert state({**SUMMARY, "unstable": True}) == "unstable" and state(SUMMARY) == "stable"
    assert state({}) == ""   # nothing timed (a pipeline without benchmark)


def test_failed_and_killed_runs_say_where_and_why():
    failed = _record("FAILED", stage="quantize", error="InputError: calibration needs 8 batches\nmore")
    assert description.ended(failed) == ("**int8_static+inductor**: FAILED in stage quantize: "
                                         "InputError: calibration needs 8 batches")
    killed = _record("KILLED", stage="benchmark", reason="stopped by SIGTERM")
    assert description.ended(killed) == "**int8_static+inductor**: KILLED in stage benchmark: stopped by SIGTERM"
    assert description.running(_record("RUNNING")).startswith("**int8_static+inductor**: running")


def test_logged_models_are_named_after_the_recipe():
    assert description.model_stem(_record()) == "int8_static-inductor"
    bare = RunRecord(run_dir="x", tags={"recipe": "as loaded"})
    assert description.model_stem(bare) is None   # the file's stem: model-pt2
