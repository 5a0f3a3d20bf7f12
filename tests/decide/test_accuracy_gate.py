"""The accuracy gate's mode: relative for a lower-is-better metric unless accuracy.mode says
otherwise, absolute for a higher-is-better one; the plan says which applies and why; and a
regressor whose error rises is rejected end to end."""
from __future__ import annotations

import math

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core.errors import ConfigError
from ptflow.decide.accuracy import AccuracyConfig, DropMode, judge
from tests.conftest import compose
from tests.user_inputs import _config, _run


def test_an_11_percent_rise_in_mse_is_rejected_by_default():
    verdict = judge(AccuracyConfig(), "mse", 0.10, 0.111, False)
    assert not verdict.accepted and verdict.mode is DropMode.RELATIVE
    assert verdict.drop == pytest.approx(0.11)
    assert verdict.explain() == ("mse went from 0.1000 (baseline) to 0.1110: a rise of 11.00% of the baseline, "
                                 "more than accuracy.max_drop=0.01 (relative)")
    assert verdict.metrics() == {"accuracy.drop": pytest.approx(0.11), "accuracy.accepted": 0.0,
                                 "accuracy.relative": 1.0, "accuracy.max_drop": 0.01}
    assert judge(AccuracyConfig(), "mse", 0.10, 0.1009, False).accepted        # a 0.9% rise is within 1%
    assert judge(AccuracyConfig(), "mse", 0.10, 0.05, False).accepted          # and a fall is better


def test_a_higher_is_better_metric_keeps_the_absolute_default():
    verdict = judge(AccuracyConfig(), "top1_accuracy", 0.90, 0.885, True)
    assert verdict.mode is DropMode.ABSOLUTE and verdict.drop == pytest.approx(0.015) and not verdict.accepted
    assert verdict.metrics()["accuracy.relative"] == 0.0 and "a drop of 0.0150, more than" in verdict.explain()
    assert judge(AccuracyConfig(), "top1_accuracy", 0.90, 0.895, True).accepted


def test_an_explicit_mode_wins_over_the_default():
    absolute = AccuracyConfig(mode=DropMode.ABSOLUTE)
    verdict = judge(absolute, "mse", 0.10, 0.111, False)   # 0.011 in mse's units: the old, silent acceptance
    assert verdict.mode is DropMode.ABSOLUTE and verdict.drop == pytest.approx(0.011) and not verdict.accepted
    assert judge(absolute, "mse", 0.01, 0.0111, False).accepted
    relative = judge(AccuracyConfig(mode=DropMode.RELATIVE), "top1_accuracy", 0.50, 0.496, True)
    assert relative.mode is DropMode.RELATIVE and relative.drop == pytest.approx(0.008) and relative.accepted


def test_the_default_follows_the_direction_accuracy_higher_is_better_sets():
    verdict = judge(AccuracyConfig(higher_is_better=False), "top1_accuracy", 0.50, 0.52, True)
    assert verdict.mode is DropMode.RELATIVE and verdict.drop == pytest.approx(0.04)
    assert "a rise of 4.00% of the baseline" in verdict.explain()
    assert judge(AccuracyConfig(higher_is_better=True), "mse", 1.0, 0.9, False).mode is DropMode.ABSOLUTE


def test_relative_from_a_zero_baseline():
    gate = AccuracyConfig()
    assert judge(gate, "mse", 0.0, 0.0, False).accepted
    assert judge(gate, "mse", 0.0, 0.1, False).drop == math.inf
    assert judge(gate, "err", 0.0, -0.1, False).drop == -math.inf        # better than zero error: accepted
    assert not judge(gate, "mse", 0.0, float("nan"), False).accepted
    assert not judge(gate, "mse", 0.2, float("nan"), False).accepted


@pytest.mark.parametrize("overrides, mode", [((), None), (("accuracy.mode=null",), None),
                                              (("accuracy.mode=relative",), DropMode.RELATIVE),
                                              (("accuracy.mode=absolute",), DropMode.ABSOLUTE)])
def test_accuracy_mode_from_the_config(overrides, mode):
    plan = compile_plan(*compose(*overrides))
    (benchmark,) = [s for s in plan.stages if s.name == "benchmark"]
    assert benchmark.config.accuracy.mode is mode


def test_an_unknown_mode_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as caught:
        compile_plan(*compose("accuracy.mode=sideway"))
    (problem,) = caught.value.problems
    assert problem.key == "accuracy.mode" and "'absolute', 'relative'" in problem.render()


def _gate_line(*overrides: str) -> str:
    plan = compile_plan(*compose(*overrides))
    (line,) = [n.text for s in plan.stages if s.name == "benchmark" for n in s.notes if "accuracy gate" in n.text]
    return line


def test_the_plan_states_the_gate_with_its_mode_and_why():
    assert _gate_line("data.metric=mse").startswith(
        "accuracy gate: mse may rise at most 1% of the baseline (relative: mse is lower-is-better)")
    assert _gate_line().startswith(
        "accuracy gate: top1_accuracy may drop at most 0.01 in its units (absolute: top1_accuracy is higher-is-better)")
    assert "(absolute: accuracy.mode=absolute)" in _gate_line("data.metric=mse", "accuracy.mode=absolute")
    assert "top1_accuracy may rise at most 1% of the baseline (relative: accuracy.higher_is_better=false)" in \
        _gate_line("accuracy.higher_is_better=false")
    assert "fails the run and exports nothing" in _gate_line("accuracy.enforce=true")
    assert "nothing is rejected" in _gate_line("accuracy.max_drop=null")
    assert _gate_line("data.metric=null") == "accuracy gate: none (data.metric=null: no task metric to judge)"


# A regressor whose last layer is zeroed (tests.scramble_recipe): its MSE about doubles, yet rises
# by less than 0.01 in MSE's units, so only a relative gate catches it.
REGRESSOR = {"builder": {"_target_": "tests.regression_models.Regressor"}, "weights": None}
REGRESSION_DATA = {"source": {"_target_": "tests.regression_models.regression_split", "rows": 96, "seed": 0},
                   "metric": "mse", "batch_size": 32}
WRECKED = ("plugins=[tests.scramble_recipe]", "quantize.method=scramble", "pipeline=[load,validate,quantize,benchmark]")


def test_a_regressor_whose_mse_rises_is_rejected_end_to_end(tmp_path):
    artifact, warnings = _run(tmp_path, *_config(*WRECKED, model=REGRESSOR, data=REGRESSION_DATA))
    m = artifact.metrics
    assert m["benchmark.mse"] > m["validate.mse"] * 1.5 and m["benchmark.mse_delta"] < 0.01
    assert m["accuracy.relative"] == 1.0
    assert m["accuracy.drop"] == pytest.approx(m["benchmark.mse_delta"] / m["validate.mse"])
    assert artifact.tags["accepted"] == "false" and m["accuracy.accepted"] == 0.0
    assert "a rise of" in warnings["accuracy"] and "more than accuracy.max_drop=0.01 (relative)" in warnings["accuracy"]
    # the same run under the old absolute reading passes: the mse moved by less than 0.01
    artifact, _ = _run(tmp_path, *_config(*WRECKED, "accuracy.mode=absolute", model=REGRESSOR, data=REGRESSION_DATA))
    assert artifact.tags["accepted"] == "true" and artifact.metrics["accuracy.relative"] == 0.0


def test_an_unchanged_regressor_is_accepted_with_every_regression_metric(tmp_path):
    for name in ("mse", "mae"):
        artifact, _ = _run(tmp_path, *_config("pipeline=[load,validate,benchmark]", model=REGRESSOR,
                                              data={**REGRESSION_DATA, "metric": name}))
        assert artifact.tags["accepted"] == "true" and artifact.metrics["accuracy.drop"] == 0.0
        assert 0 < artifact.metrics[f"validate.{name}"] < 0.1


def test_a_metric_from_a_plugin_module_is_selected_by_data_metric(tmp_path):
    """The worked example of docs/extending/index.md: listed in `plugins`, chosen by data.metric."""
    with pytest.raises(ConfigError) as caught:   # a name no module registered: the registered ones are listed
        compile_plan(*compose("data.metric=within_quarter"))
    (problem,) = caught.value.problems
    assert problem.key == "data.metric" and "mse" in problem.render() and "top1_accuracy" in problem.render()
    plugin = "plugins=[tests.within_half_metric]"
    assert "within_half may drop at most 0.01 in its units (absolute: within_half is higher-is-better)" in \
        _gate_line(plugin, "data.metric=within_half")
    artifact, _ = _run(tmp_path, *_config(plugin, "pipeline=[load,validate,benchmark]", model=REGRESSOR,
                                          data={**REGRESSION_DATA, "metric": "within_half"}))
    assert artifact.metrics["validate.within_half"] == 1.0 and artifact.tags["accepted"] == "true"
