"""Pre-flight of a command line: every override checked, every sweep job planned."""
from __future__ import annotations

import pytest

from ptflow.cli import CONFIG_DIR
from ptflow.errors import ConfigError
from ptflow.preflight import check


def _problems(*overrides, multirun=False):
    with pytest.raises(ConfigError) as caught:
        check(list(overrides), CONFIG_DIR, multirun=multirun)
    return {p.key: p for p in caught.value.problems}


def test_a_sweep_without_multirun_and_a_bad_key_are_both_reported():
    problems = _problems("quantize=none,int8_dynamic", "benchmark.iterz=3")
    assert set(problems) == {"quantize", "benchmark.iterz"}
    assert "ptflow -m quantize=none,int8_dynamic" in problems["quantize"].hint


def test_every_job_of_a_sweep_is_planned():
    checked = check(["quantize=none,int8_dynamic", "compile=eager,inductor"], CONFIG_DIR, multirun=True)
    assert len(checked.jobs) == 4
    assert {(j.plan.stages[2].config.method, j.plan.stages[3].config.backend) for j in checked.jobs} == {
        ("none", "eager"), ("none", "inductor"), ("int8_dynamic", "eager"), ("int8_dynamic", "inductor")}


def test_each_sweep_jobs_own_problem_names_the_job():
    with pytest.raises(ConfigError) as caught:
        check(["compile=eager,inductor", "compile.mode=reduce-overhead"], CONFIG_DIR, multirun=True)
    eager, inductor = caught.value.problems     # eager takes no mode; CUDA graphs need CUDA
    assert eager.key == inductor.key == "compile.mode"
    assert "with backend 'eager'" in eager.expected and eager.hint.endswith(
        "in job(s): compile=eager ++compile.mode=reduce-overhead")
    assert "CUDA graphs" in inductor.hint and "in job(s): compile=inductor" in inductor.hint


def test_hydra_gets_the_users_text_and_list_sweeps_survive():
    checked = check(["quantize.skip=[net.6],[net.0]"], CONFIG_DIR, multirun=True)
    assert checked.overrides == ("quantize.skip=[net.6],[net.0]",)
    assert sorted(j.plan.stages[2].config.skip for j in checked.jobs) == [("net.0",), ("net.6",)]


def test_a_schema_field_the_yaml_omits_is_force_added():
    checked = check(["quantize=none", "quantize.skip=[net.6]"], CONFIG_DIR)
    assert checked.overrides == ("quantize=none", "++quantize.skip=[net.6]")
    assert checked.jobs[0].plan.stages[2].config.skip == ("net.6",)


def test_free_form_builder_arguments_are_checked_against_the_callable():
    problems = _problems("model.builder.hiden=12")
    assert "did you mean 'hidden'?" in problems["model.builder.hiden"].hint
