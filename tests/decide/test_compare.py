"""ptflow-compare: the Pareto front, the ranking rules, the pick under a budget, the selection
of a sweep's runs from MLflow and the report files — against a small sqlite store built here
(one per module: creating a store costs seconds), no ptflow run."""
from __future__ import annotations

import csv
import math

import pytest

from ptflow.decide import compare as cmp
from ptflow.decide.pareto import frontier
from ptflow.review.compare_cli import run as cli

SWEEP_OLD, SWEEP_NEW = "aaaa1111" + "0" * 24, "aaaa2222" + "0" * 24
BASELINE = 0.9


# ---- the Pareto front --------------------------------------------------------------------------

def test_frontier_drops_dominated_points():
    points = [(1.0, -0.02), (2.0, 0.0), (3.0, -0.01), (0.5, -0.05), (2.0, -0.001)]
    # (3.0, -0.01) is beaten by (2.0, 0.0) on both; (2.0, -0.001) by (2.0, 0.0) on accuracy at equal latency
    assert frontier(points) == [0, 1, 3]


def test_frontier_keeps_exact_duplicates_single_points_and_skips_nan():
    assert frontier([(1.0, 0.0), (1.0, 0.0), (2.0, -0.1)]) == [0, 1]
    assert frontier([(5.0, -0.3)]) == [0]
    assert frontier([(math.nan, 0.5), (None, 1.0), None, (2.0, float("inf")), (3.0, 0.0)]) == [4]
    assert frontier([]) == []


# ---- rows, ranking and the budget (no store) -----------------------------------------------------

def row(name, speedup=1.0, drop=0.0, stability="stable", status="FINISHED", p50=1.0, baseline=BASELINE, **more):
    return cmp.Row(run_id=f"{name:0<32}"[:32], name=name, status=status, speedup=speedup, p50_ms=p50,
                   delta=None if drop is None else -drop, drop=drop, stability=stability, metric="top1_accuracy",
                   baseline_metric=baseline, **more)


def test_ranks_follow_the_speedup_and_invalid_failed_unbenchmarked_are_unranked():
    """A rank reads as "measured faster than the next": a slow stable run (0.20x) is not ranked
    above faster unstable ones; the pick still prefers a stable run."""
    rows = [row("fast_unstable", 3.0, stability="unstable"), row("stable", 1.2), row("invalid", 9.0, stability="invalid"),
            row("failed", 5.0, status="FAILED", error="boom"), row("nobench", None), row("stable2", 1.5),
            row("slow_stable", 0.2), row("noisy", 1.1, stability="unstable")]
    ranked = cmp.rank(rows)
    assert [(n, r.name) for n, r in ranked] == [(1, "fast_unstable"), (2, "stable2"), (3, "stable"), (4, "noisy"),
                                                (5, "slow_stable"), (None, "invalid"), (None, "nobench"),
                                                (None, "failed")]
    assert rows[3].unranked_reason == "FAILED: boom"
    assert cmp.pick(rows, cmp.Budget.parse("0.01")).row.name == "stable2"


def test_budget_parses_absolute_and_relative_and_refuses_nonsense():
    assert cmp.Budget.parse("0.01").limit(row("a")) == 0.01
    assert cmp.Budget.parse("1%").limit(row("a")) == pytest.approx(0.009)
    assert cmp.Budget.parse("1%").limit(row("a", baseline=None)) is None
    for bad in ("abc", "-1", "nan", "%", "1%%"):
        with pytest.raises(ValueError, match="--max-accuracy-drop"):
            cmp.Budget.parse(bad)


def test_pick_takes_the_fastest_stable_run_within_the_budget():
    rows = [row("big_drop", 2.0, drop=0.02), row("small_drop", 1.3, drop=0.005), row("unstable", 4.0, stability="unstable")]
    assert cmp.pick(rows, cmp.Budget.parse("0.01")).row.name == "small_drop"
    assert cmp.pick(rows, cmp.Budget.parse("3%")).row.name == "big_drop"            # 0.027 allowed
    assert cmp.pick(rows, cmp.Budget.parse("0.02")).row.name == "big_drop"          # equal to the budget qualifies


def test_pick_says_why_none_qualifies_and_warns_when_only_unstable_do():
    rows = [row("a", 2.0, drop=0.05), row("b", 1.5, drop=0.02), row("f", status="FAILED")]
    none = cmp.pick(rows, cmp.Budget.parse("0.01"))
    assert none.row is None
    assert "none of 2 ranked run(s) drops ≤ 0.01; the closest is b (drop 0.02" in none.message
    assert "1 other run(s) not ranked" in none.message
    shaky = cmp.pick(rows + [row("u", 1.1, drop=0.0, stability="unstable")], cmp.Budget.parse("0.01"))
    assert shaky.row.name == "u" and "unstable" in shaky.warning


# ---- a real sqlite store -----------------------------------------------------------------------

def _child(client, experiment_id, parent_id, sweep_id, job, quantize, start, *, speedup=None, drop=0.0,
           stability="stable", status="FINISHED", p50=2.0, run_dir=None, overrides=None):
    from mlflow.entities import Metric, Param

    tags = {"ptflow.sweep_id": sweep_id, "ptflow.sweep": f"/sweeps/{sweep_id[:8]}", "ptflow.job_num": str(job),
            "quantize": quantize, "model": "digits_mlp", "benchmark.stability": stability}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    if run_dir:
        tags.update({"ptflow.run_dir": str(run_dir), "ptflow.model.pt2": "models:/m-123"})
    if status == "FAILED":
        tags["ptflow.error"] = "StageError: quantize blew up\ntraceback..."
    run = client.create_run(experiment_id, run_name=f"digits_mlp-{quantize}-eager @12-00-00#{job}",
                            start_time=start, tags=tags)
    metrics = {"validate/top1_accuracy": BASELINE, "load/size_mb": 8.7}
    if speedup is not None:
        metrics.update({"benchmark/speedup_p50": speedup, "benchmark/speedup_ci_low": speedup * 0.95,
                        "benchmark/speedup_ci_high": speedup * 1.05, "benchmark/candidate.p50_ms": p50,
                        "benchmark/candidate.p99_ms": p50 * 1.3, "benchmark/candidate.p99_supported": 0,
                        "benchmark/top1_accuracy_delta": -drop, "accuracy/drop": drop, "export/size_mb": 2.4})
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
                     params=[Param("data.metric", "top1_accuracy")])
    if overrides:
        client.log_text(run.info.run_id, "\n".join(overrides) + "\n", "overrides.txt")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def _parent(client, experiment_id, sweep_id, start, jobs):
    return client.create_run(experiment_id, run_name=f"sweep {jobs} job(s) @12-00-00", start_time=start,
                             tags={"ptflow.sweep_parent": "true", "ptflow.sweep_id": sweep_id}).info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Experiment 'ptflow': an old sweep (2 runs, both drop too much) and a newer one (6 runs);
    experiment 'legacy': two sweeps from before parent runs; experiment 'broken': a sweep
    whose only run failed."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("compare")
    run_dir = root / "run3"
    (run_dir / "export").mkdir(parents=True)
    (run_dir / "export" / "model.pt2").write_bytes(b"pt2")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    ids = {"ptflow": client.create_experiment("ptflow", artifact_location=(root / "artifacts").as_uri())}
    old = _parent(client, ids["ptflow"], SWEEP_OLD, 1_000, 2)
    for job, quantize in enumerate(("int8_dynamic", "bf16")):
        _child(client, ids["ptflow"], old, SWEEP_OLD, job, quantize, 1_001 + job, speedup=1.5, drop=0.05)
    new = _parent(client, ids["ptflow"], SWEEP_NEW, 2_000, 6)
    specs = [("none", dict(speedup=1.0, p50=4.0)), ("int8_dynamic", dict(speedup=1.6, drop=0.02, p50=2.5)),
             ("int8_weight_only", dict(speedup=1.2, drop=0.005, p50=3.3, run_dir=run_dir,
                                       overrides=["benchmark=quick", "quantize=int8_weight_only"])),
             ("bf16", dict(speedup=3.0, stability="unstable", p50=1.3)),
             ("fp16", dict(speedup=5.0, stability="invalid", p50=0.8)), ("int8_static", dict(status="FAILED"))]
    runs = {q: _child(client, ids["ptflow"], new, SWEEP_NEW, job, q, 2_001 + job, **spec)
            for job, (q, spec) in enumerate(specs)}
    ids["legacy"] = client.create_experiment("legacy", artifact_location=(root / "legacy").as_uri())
    for n, sweep in enumerate(("bbbb" + "1" * 28, "cccc" + "2" * 28)):
        _child(client, ids["legacy"], None, sweep, 0, "none", 3_000 + n, speedup=1.0 + n)
    ids["broken"] = client.create_experiment("broken", artifact_location=(root / "broken").as_uri())
    broken = _parent(client, ids["broken"], "dddd" + "3" * 28, 4_000, 1)
    _child(client, ids["broken"], broken, "dddd" + "3" * 28, 0, "bf16", 4_001, status="FAILED")
    return {"uri": uri, "root": root, "client": client, "ids": ids, "old": old, "new": new, "broken": broken,
            "runs": runs}


def test_default_is_the_last_sweep_and_parents_are_never_rows(store):
    description, runs = cmp.select_runs(store["client"], "ptflow")
    assert {r.info.run_id for r in runs} == set(store["runs"].values())
    assert store["new"] in description and "6 run(s)" not in description
    _, every = cmp.select_runs(store["client"], "ptflow", all_runs=True)
    assert len(every) == 8 and store["old"] not in {r.info.run_id for r in every}


def test_sweep_prefix_parent_and_filter_select(store):
    client = store["client"]
    _, old = cmp.select_runs(client, "ptflow", sweep="aaaa1")
    assert {r.data.tags["ptflow.sweep_id"] for r in old} == {SWEEP_OLD} and len(old) == 2
    with pytest.raises(cmp.SelectionError, match="begins 2 sweep ids"):
        cmp.select_runs(client, "ptflow", sweep="aaaa")
    _, children = cmp.select_runs(client, "ptflow", parent=store["old"])
    assert len(children) == 2
    _, filtered = cmp.select_runs(client, "ptflow", filter_string="tags.quantize != 'none'")
    assert len(filtered) == 5 and "none" not in {r.data.tags["quantize"] for r in filtered}
    with pytest.raises(cmp.SelectionError, match="--filter"):
        cmp.select_runs(client, "ptflow", filter_string="tags.quantize ~~ 'x'")


def test_without_parent_runs_the_newest_sweep_id_is_the_default(store):
    description, runs = cmp.select_runs(store["client"], "legacy")
    assert [r.data.tags["ptflow.sweep_id"][:4] for r in runs] == ["cccc"] and "cccc" in description


def test_unknown_sweep_parent_experiment_say_what_exists(store):
    with pytest.raises(cmp.SelectionError, match=r"(?s)matches no sweep id.*aaaa2222.*--parent"):
        cmp.select_runs(store["client"], "ptflow", sweep="ffff")
    with pytest.raises(cmp.SelectionError, match="is no run in this store"):
        cmp.select_runs(store["client"], "ptflow", parent="0" * 32)
    with pytest.raises(cmp.SelectionError, match="no experiment 'nope'.*ptflow"):
        cmp.select_runs(store["client"], "nope")


def test_rows_from_the_store(store):
    rows = {r.name: r for r in cmp.rows_from_runs(cmp.select_runs(store["client"], "ptflow")[1])}
    quick = rows["digits_mlp-int8_weight_only-eager"]
    assert (quick.speedup, quick.drop, quick.baseline_metric, quick.size_mb, quick.p99_supported) == \
        (1.2, 0.005, BASELINE, 2.4, False)
    failed = rows["digits_mlp-int8_static-eager"]
    assert failed.size_mb == 8.7 and failed.error == "StageError: quantize blew up"
    ranked = cmp.rank(list(rows.values()))   # by speedup: the unstable bf16 (3.00x) leads, marked
    assert [r.name for _, r in ranked[:2]] == ["digits_mlp-bf16-eager", "digits_mlp-int8_dynamic-eager"]


def test_reports_csv_md_png(store, tmp_path):
    rows = cmp.rows_from_runs(cmp.select_runs(store["client"], "ptflow")[1])
    written = cmp.write_reports(rows, tmp_path / "out", cmp.Budget.parse("1%"))
    assert [p.name for p in written] == ["compare.csv", "compare.md", "pareto.png"]
    table = list(csv.DictReader(written[0].open()))
    assert [t["rank"] for t in table] == ["1", "2", "3", "4", "", ""]
    assert table[1]["recipe"] == "digits_mlp-int8_dynamic-eager" and len(table[1]["run_id"]) == 32
    assert table[3]["recipe"] == "digits_mlp-none-eager" and table[0]["stability"] == "unstable"
    # bf16 (1.3 ms, Δ 0) dominates every other ranked run; the invalid fp16 is no point at all
    assert [t["pareto"] for t in table] == ["True", "False", "False", "False", "False", "False"]
    assert table[4]["unranked_reason"] == "invalid measurement"
    markdown = written[1].read_text()
    assert "| 1 | digits_mlp-bf16-eager | 3.00x [2.85, 3.15]~ |" in markdown and "not ranked" in markdown
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_artifacts_for_a_sweep_without_finished_runs(store, tmp_path):
    written = cmp.sweep_artifacts(store["uri"], store["ids"]["broken"], store["broken"], tmp_path)
    assert all(p.is_file() for p in written) and "FAILED" in written[0].read_text()
    empty = cmp.sweep_artifacts(store["uri"], store["ids"]["ptflow"], "9" * 32, tmp_path / "empty")
    assert empty[0].read_text().startswith("rank,recipe,run_id") and empty[2].stat().st_size > 0


# ---- the command line --------------------------------------------------------------------------

@pytest.fixture()
def env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def test_cli_picks_under_a_budget_and_prints_how_to_get_it_again(store, env, capsys, tmp_path):
    code = cli(["--tracking-uri", store["uri"], "--max-accuracy-drop", "0.01", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    picked = store["runs"]["int8_weight_only"]
    assert f"ptflow-reproduce {picked}" in out and "ptflow benchmark=quick quantize=int8_weight_only" in out
    assert str(store["root"] / "run3" / "export" / "model.pt2") in out and "models:/m-123" in out
    assert "1.60x [1.52, 1.68]" in out and "~" in out and (tmp_path / "pareto.png").is_file()


def test_cli_exit_1_when_no_run_qualifies(store, env, capsys):
    assert cli(["--tracking-uri", store["uri"], "--sweep", "aaaa1", "--max-accuracy-drop", "1%"]) == 1
    assert "none of 2 ranked run(s) drops ≤ 1% (= 0.009); the closest is" in capsys.readouterr().out


def test_cli_exit_2_on_bad_input_and_creates_no_store(store, env, capsys, tmp_path):
    assert cli(["--outputs-dir", str(tmp_path / "nowhere")]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    assert cli(["--tracking-uri", f"sqlite:///{tmp_path}/missing.db"]) == 2 and not (tmp_path / "missing.db").exists()
    assert cli(["--tracking-uri", store["uri"], "--sweep", "ffff"]) == 2
    assert "the latest sweeps here" in capsys.readouterr().err
    assert cli(["--tracking-uri", store["uri"], "--max-accuracy-drop", "lots"]) == 2
    assert cli(["--tracking-uri", store["uri"], "--experiment", "nope"]) == 2
    with pytest.raises(SystemExit):
        cli(["--sweep", "a", "--all"])   # argparse: mutually exclusive


def test_plot_labels_drop_the_model_name_every_recipe_shares():
    from ptflow.decide.pareto import _shared_head

    assert _shared_head(["digits_mlp-bf16-eager", "digits_mlp-none-eager"]) == "digits_mlp-"
    assert _shared_head(["digits_mlp-bf16-eager", "digits_cnn-bf16-eager"]) == ""
    assert _shared_head(["only-one"]) == ""


def test_pick_names_the_faster_unstable_runs_it_passed_over():
    rows = [row("slow-stable", speedup=1.0), row("fast-noisy", speedup=1.5, stability="unstable"),
            row("fast-noisy-over-budget", speedup=2.0, stability="unstable", drop=0.5)]
    choice = cmp.pick(rows, cmp.Budget.parse("0.01"))
    assert choice.row.name == "slow-stable"
    assert "fast-noisy (1.50x)" in choice.warning and "over-budget" not in choice.warning
    assert cmp.pick([row("a", speedup=2.0), row("b", speedup=1.5, stability="unstable")],
                    cmp.Budget.parse("0.01")).warning == ""


def test_pick_names_the_faster_runs_it_left_out_because_their_timings_were_invalid():
    """A sweep printed 17.70x for a run ptflow itself flagged invalid: the pick says why not it."""
    rows = [row("slow-stable", speedup=1.1), row("busy", speedup=17.7, stability="invalid"),
            row("busy-over-budget", speedup=20.0, stability="invalid", drop=0.5),
            row("busy-but-slower", speedup=0.9, stability="invalid")]
    choice = cmp.pick(rows, cmp.Budget.parse("0.01"))
    assert choice.row.name == "slow-stable"
    assert "busy (17.70x)" in choice.warning and "timings were invalid" in choice.warning
    assert "over-budget" not in choice.warning and "slower" not in choice.warning


def test_the_pareto_picture_says_why_it_is_empty_when_every_run_was_invalid(tmp_path):
    rows = [row(f"r{i}", speedup=2.0, stability="invalid") for i in range(8)]
    assert cmp.nothing_ranked(rows).startswith("nothing ranked: 8 run(s): invalid measurement")
    assert "quieter machine" in cmp.nothing_ranked(rows)
    mixed = rows[:2] + [row("gone", status="FAILED", error="boom")]
    assert cmp.nothing_ranked(mixed) == ("nothing ranked: 2 run(s): invalid measurement; 1 run(s): FAILED\n"
                                         "(timings too dispersed to be a measurement: measure again on a quieter machine)")
    paths = cmp.write_reports(rows, tmp_path)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(paths) == 3


def _logged(metrics: dict[str, float], params: dict[str, str] | None = None):
    """An MLflow Run entity's shape, no store: what row_from_run reads."""
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(run_id="r" * 32, run_name="digits_mlp-bf16-eager", status="FINISHED",
                                                start_time=0),
                           data=SimpleNamespace(tags={}, params={"data.metric": "mse", **(params or {})},
                                                metrics={"validate/mse": 0.2, "benchmark/mse_delta": 0.022,
                                                         "benchmark/speedup_p50": 1.5, **metrics}))


def test_a_relative_accuracy_drop_is_compared_in_the_metrics_units():
    # the gate judged mse relative to the baseline (0.022 / 0.2 = 11%); budgets read metric units
    assert cmp.row_from_run(_logged({"accuracy/drop": 0.11, "accuracy/relative": 1})).drop == pytest.approx(0.022)
    assert cmp.row_from_run(_logged({"accuracy/drop": 0.022, "accuracy/relative": 0})).drop == pytest.approx(0.022)
    older = _logged({"accuracy/drop": 0.11}, {"accuracy.mode": "relative"})   # before accuracy/relative was logged
    assert cmp.row_from_run(older).drop == pytest.approx(0.022)
    assert cmp.row_from_run(_logged({"accuracy/drop": math.inf, "accuracy/relative": 1})).drop is None
    eleven_percent = cmp.row_from_run(_logged({"accuracy/drop": 0.11, "accuracy/relative": 1}))
    for budget, fits in (("0.01", False), ("10%", False), ("0.03", True), ("12%", True)):
        assert cmp.Budget.parse(budget).qualifies(eleven_percent) is fits, budget
