"""A sweep's pick on its parent MLflow run: the budget it is made under, the description (pick on
top, every run ranked, links the UI follows), the best_* tags and metrics, and `ptflow-compare
--max-accuracy-drop` replacing it — against a sqlite store built here, no ptflow run."""
from __future__ import annotations

import math

import pytest

from ptflow.decide.budget import Budget, CompareConfig, from_run
from ptflow.runs import sweep_pick
from ptflow.runs.sweep_parent import sweep_params
from tests.decide.test_compare import _child, _parent


def test_the_budget_comes_from_compare_then_from_the_accuracy_gate_in_its_mode():
    assert from_run({"compare.max_accuracy_drop": "2%", "accuracy.max_drop": "0.01"}, {}) == \
        (Budget(0.02, True, "2%"), "compare.max_accuracy_drop")
    assert from_run({"compare.max_accuracy_drop": "null", "accuracy.max_drop": "0.01"}, {}) == \
        (Budget(0.01, False, "0.01"), "accuracy.max_drop")
    # accuracy.mode null judged a lower-is-better metric relatively: the job logged accuracy/relative=1
    assert from_run({"accuracy.max_drop": "0.05", "accuracy.mode": "null"}, {"accuracy/relative": 1.0})[0] == \
        Budget(0.05, True, "5%")
    assert from_run({"accuracy.max_drop": "null"}, {}) is None
    assert from_run({"compare.max_accuracy_drop": "lots"}, {}) is None    # a store's params are not trusted


def test_compare_max_accuracy_drop_is_checked_by_the_plan():
    from ptflow.core.errors import ConfigError

    assert CompareConfig("1%").max_accuracy_drop == "1%" and CompareConfig(0.02).max_accuracy_drop == 0.02
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        CompareConfig("-3")


def test_the_sweep_overrides_become_params_as_a_hydra_user_filters_them():
    assert sweep_params(["quantize=none,int8_dynamic", "+tags.team=cv", "~export", "hydra/launcher=joblib",
                         "quantize=bf16"]) == {"quantize": "none,int8_dynamic", "tags.team": "cv",
                                               "export": "(deleted)", "hydra/launcher": "joblib"}


@pytest.fixture
def sweep(tmp_path):
    """A parent and four jobs: fast but over a 0.01 budget, the pick, a slower one (all three over
    0.001), a failed one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    eid = client.create_experiment("ptflow", artifact_location=(tmp_path / "artifacts").as_uri())
    sid = "bbbb" + "1" * 28
    parent = _parent(client, eid, sid, 1000, 4)
    ids = {q: _child(client, eid, parent, sid, job, q, 2000 + job, speedup=speedup, drop=drop, status=status)
           for job, (q, speedup, drop, status) in enumerate([("int8_static", 4.0, 0.03, "FINISHED"),
                                                            ("int8_dynamic", 2.0, 0.002, "FINISHED"),
                                                            ("none", 1.0, 0.004, "FINISHED"),
                                                            ("bf16", None, 0.0, "FAILED")])}
    return client, eid, parent, ids


def _runs(client, eid, parent):
    from ptflow.decide.compare import children

    return children(client, eid, parent)


def test_the_parent_holds_the_pick_its_links_and_every_run(sweep):
    client, eid, parent, ids = sweep
    runs = _runs(client, eid, parent)
    picked = sweep_pick.record(client, parent, runs, (Budget.parse("0.01"), "accuracy.max_drop"), "picked when")
    assert picked.choice.row.run_id == ids["int8_dynamic"]
    assert picked.line.startswith("pick within a drop of 0.01 (accuracy.max_drop): digits_mlp-int8_dynamic-eager 2.00x")
    run = client.get_run(parent)
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["ptflow.best_run_id"], tags["ptflow.pick.budget"]) == (ids["int8_dynamic"], "0.01 (accuracy.max_drop)")
    assert metrics["best/speedup_p50"] == 2.0 and metrics["best/accuracy_drop"] == 0.002
    assert metrics["best/speedup_ci_low"] == pytest.approx(1.9) and metrics["best/metric_delta"] == -0.002
    note = tags["mlflow.note.content"]
    head, table = note.split("### ")[:2]
    assert head.startswith("## Pick: **digits_mlp-int8_dynamic-eager** (within a drop of 0.01")
    assert "**2.00x** [1.90, 2.10]" in head and "top1_accuracy Δ -0.0020 (drop 0.002 ≤ 0.01)" in head
    page = f"#/experiments/{eid}/runs/{ids['int8_dynamic']}?workflowType=machine_learning"
    assert f"run [`{ids['int8_dynamic'][:8]}`]({page})" in head
    assert f"`ptflow-reproduce {ids['int8_dynamic']}`" in head
    assert table.startswith("4 run(s), ranked by speedup")
    order = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| ") and "recipe" not in line]
    assert order == ["digits_mlp-int8_static-eager", "digits_mlp-int8_dynamic-eager", "digits_mlp-none-eager",
                     "digits_mlp-bf16-eager"]
    assert "not ranked: digits_mlp-bf16-eager: FAILED" in note
    assert f"ptflow-compare --parent {parent} --max-accuracy-drop X" in note


def test_a_later_pick_that_finds_none_clears_the_former_one(sweep):
    client, eid, parent, ids = sweep
    runs = _runs(client, eid, parent)
    sweep_pick.record(client, parent, runs, (Budget.parse("0.01"), "accuracy.max_drop"), "picked when")
    again = sweep_pick.record(client, parent, runs, (Budget.parse("0.001"), "ptflow-compare"), "picked by")
    assert again.choice.row is None and again.line.startswith("no run qualifies")
    run = client.get_run(parent)
    assert "ptflow.best_run_id" not in run.data.tags and "ptflow.best_recipe" not in run.data.tags
    assert math.isnan(run.data.metrics["best/speedup_p50"])      # the former figures no longer hold
    assert run.data.tags["mlflow.note.content"].startswith("## No pick within a drop of 0.001")
    assert "the closest is digits_mlp-int8_dynamic-eager" in run.data.tags["mlflow.note.content"]
    nobudget = sweep_pick.record(client, parent, runs, None, "picked when")
    assert nobudget.choice is None and "no accuracy budget" in client.get_run(parent).data.tags["mlflow.note.content"]


def test_a_long_sweep_keeps_the_description_within_what_a_tag_holds(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    eid = client.create_experiment("ptflow", artifact_location=(tmp_path / "artifacts").as_uri())
    sid = "cccc" + "2" * 28
    parent = _parent(client, eid, sid, 1000, 80)
    for job in range(80):
        _child(client, eid, parent, sid, job, f"recipe_{job:02d}", 2000 + job, speedup=1 + job / 10, drop=0.001)
    sweep_pick.record(client, parent, _runs(client, eid, parent), (Budget.parse("0.01"), "x"), "picked when")
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert len(note) <= sweep_pick.NOTE_CHARS and note.startswith("## Pick: **digits_mlp-recipe_79-eager**")
    assert "more row(s): see the artifact compare/compare.md" in note and note.rstrip().endswith("pareto.png")


def test_ptflow_compare_replaces_the_pick_of_a_whole_sweep_only(sweep, capsys, monkeypatch):
    from ptflow.review.compare_cli import run as cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client, eid, parent, ids = sweep
    uri = client.tracking_uri
    assert cli(["--tracking-uri", uri, "--max-accuracy-drop", "0.05"]) == 0
    out = capsys.readouterr().out
    assert f"recorded on the sweep's parent run {parent}" in out
    run = client.get_run(parent)
    assert run.data.tags["ptflow.best_run_id"] == ids["int8_static"]
    assert run.data.tags["ptflow.pick.by"].startswith("picked by ptflow-compare --max-accuracy-drop 0.05,")
    # a filtered selection is not the sweep: the parent keeps its pick
    assert cli(["--tracking-uri", uri, "--parent", parent, "--filter", "tags.quantize = 'none'",
                "--max-accuracy-drop", "0.05"]) == 0
    assert "recorded on" not in capsys.readouterr().out
    assert client.get_run(parent).data.tags["ptflow.best_run_id"] == ids["int8_static"]
    # no run qualifies: exit 1, and the parent says so instead of keeping a pick that no longer holds
    assert cli(["--tracking-uri", uri, "--parent", parent, "--max-accuracy-drop", "0.0001"]) == 1
    assert "replacing the pick under 0.05 (ptflow-compare)" in capsys.readouterr().out
    assert "ptflow.best_run_id" not in client.get_run(parent).data.tags


def test_ui_addresses_open_the_runs_not_the_genai_pages():
    from ptflow.runs import ui_links

    assert ui_links.run_page("sqlite:////x/outputs/mlflow.db", "1", "abc") == \
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"   # where `mlflow ui` serves
    assert ui_links.run_page("http://mlflow.internal:5000/", "3", "abc") == \
        "http://mlflow.internal:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_links.model_path("3", "m-1") == "#/experiments/3/models/m-1?workflowType=machine_learning"


def test_a_store_writers_run_name_cannot_put_html_or_links_into_the_description(sweep):
    client, eid, parent, ids = sweep
    client.set_tag(ids["none"], "mlflow.runName", "<img src=x onerror=alert(1)> [me](javascript:alert(1)) `x` | y")
    sweep_pick.record(client, parent, _runs(client, eid, parent), (Budget.parse("0.01"), "x"), "picked when")
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert "<img" not in note and " [me](" not in note and "`x`" not in note
    assert "&lt;img src=x onerror=alert(1)&gt; \\[me\\](javascript:alert(1)) 'x' \\| y" in note
