"""Tests for ptflow.core.typed: plain data -> frozen dataclasses, collecting every problem."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from ptflow.core.errors import ConfigError, Problem
from ptflow.core.typed import build, to_plain


class Mode(str, enum.Enum):
    EAGER = "eager"
    COMPILED = "compiled"


@dataclass(frozen=True)
class Bench:
    iters: int = 10
    warmup: int = 2
    scale: float = 1.0

    def __post_init__(self):
        if self.iters < 1:
            raise ConfigError.single("iters", self.iters, "an int >= 1", "use at least 1")


@dataclass(frozen=True)
class Window:
    low: int = 0
    high: int = 1

    def __post_init__(self):
        if self.low > self.high:
            raise ValueError("low must not exceed high")


@dataclass(frozen=True)
class Job:
    name: str
    mode: Mode = Mode.EAGER
    benchmark: Bench = field(default_factory=Bench)
    window: Window = field(default_factory=Window)
    stages: tuple[str, ...] = ()
    seed: Optional[int] = 0
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def problems_of(excinfo) -> dict[str, Problem]:
    return {p.key: p for p in excinfo.value.problems}


def test_builds_nested_dataclasses():
    job = build(Job, {"name": "x", "benchmark": {"iters": 5, "warmup": 1}})
    assert isinstance(job, Job)
    assert job.benchmark == Bench(iters=5, warmup=1)
    assert isinstance(job.benchmark, Bench)
    assert job.window == Window()  # default factory used


def test_defaults_used_when_keys_absent():
    job = build(Job, {"name": "only"})
    assert job == Job(name="only")


def test_unknown_key_with_did_you_mean():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "benchmark": {"iterz": 5}})
    problems = excinfo.value.problems
    assert len(problems) == 1
    p = problems[0]
    assert p.key == "benchmark.iterz"
    assert p.found == 5
    assert "iters" in p.expected
    assert p.hint == "did you mean 'iters'?"


def test_unknown_key_without_close_match_suggests_removal():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "zzzzzzzz": 1})
    (p,) = excinfo.value.problems
    assert p.key == "zzzzzzzz"
    assert p.hint == "remove it"


def test_several_problems_reported_together():
    data = {
        "name": 3,                          # wrong type
        "mode": "compild",                  # bad enum
        "benchmark": {"iterz": 5, "warmup": "two"},  # unknown key + wrong type
        "bogus": True,                      # unknown key
    }
    with pytest.raises(ConfigError) as excinfo:
        build(Job, data)
    keys = [p.key for p in excinfo.value.problems]
    assert len(keys) == 5
    assert set(keys) == {"name", "mode", "benchmark.iterz", "benchmark.warmup", "bogus"}
    message = str(excinfo.value)
    assert message.startswith("5 config problem(s):")
    for key in keys:
        assert key in message


def test_enum_by_value():
    job = build(Job, {"name": "x", "mode": "compiled"})
    assert job.mode is Mode.COMPILED


def test_enum_member_accepted():
    job = build(Job, {"name": "x", "mode": Mode.COMPILED})
    assert job.mode is Mode.COMPILED


def test_bad_enum_value_with_did_you_mean():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "mode": "compild"})
    (p,) = excinfo.value.problems
    assert p.key == "mode"
    assert p.found == "compild"
    assert "'eager'" in p.expected and "'compiled'" in p.expected
    assert p.hint == "did you mean 'compiled'?"


def test_optional_fields_accept_none():
    job = build(Job, {"name": "x", "seed": None, "note": None})
    assert job.seed is None
    assert job.note is None


def test_optional_fields_accept_values_and_reject_wrong_type():
    job = build(Job, {"name": "x", "seed": 7, "note": "hi"})
    assert job.seed == 7 and job.note == "hi"
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "seed": "seven"})
    (p,) = excinfo.value.problems
    assert p.key == "seed"
    assert p.found == "seven"


def test_none_rejected_for_non_optional():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": None})
    (p,) = excinfo.value.problems
    assert p.key == "name"
    assert p.found is None


def test_tuple_of_str_from_list():
    job = build(Job, {"name": "x", "stages": ["load", "validate"]})
    assert job.stages == ("load", "validate")
    assert isinstance(job.stages, tuple)


def test_tuple_of_str_rejects_string_and_bad_items():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "stages": "load"})
    assert [p.key for p in excinfo.value.problems] == ["stages"]
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "stages": ["load", 3]})
    assert [p.key for p in excinfo.value.problems] == ["stages.1"]


def test_int_accepted_for_float():
    job = build(Job, {"name": "x", "benchmark": {"scale": 2}})
    assert job.benchmark.scale == 2.0
    assert type(job.benchmark.scale) is float


def test_bool_rejected_for_int():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "benchmark": {"warmup": True}})
    (p,) = excinfo.value.problems
    assert p.key == "benchmark.warmup"
    assert p.found is True
    assert p.expected == "int"


def test_bool_rejected_for_float():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "benchmark": {"scale": False}})
    assert [p.key for p in excinfo.value.problems] == ["benchmark.scale"]


def test_text_that_is_no_int_is_rejected_for_int():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "benchmark": {"iters": "5.5"}})
    (p,) = excinfo.value.problems
    assert p.key == "benchmark.iters"
    assert p.found == "5.5"
    assert p.expected == "int"


def test_numeric_text_converts_as_omegaconf_typed_nodes_do():
    """${oc.env:ITERS} resolves to text; a typed OmegaConf node would convert it, so ptflow does."""
    assert build(Job, {"name": "x", "benchmark": {"iters": " 5"}}).benchmark.iters == 5


def test_missing_required_field():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"mode": "eager"})
    (p,) = excinfo.value.problems
    assert p.key == "name"
    assert p.found == "<missing>"
    assert "required" in p.hint


def test_non_mapping_for_dataclass():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "benchmark": 5})
    (p,) = excinfo.value.problems
    assert p.key == "benchmark"
    assert "Bench" in p.expected


def test_post_init_config_error_prefixed_with_path():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "benchmark": {"iters": 0}})
    (p,) = excinfo.value.problems
    assert p.key == "benchmark.iters"
    assert p.found == 0
    assert p.expected == "an int >= 1"
    assert p.hint == "use at least 1"


def test_post_init_config_error_with_explicit_path():
    with pytest.raises(ConfigError) as excinfo:
        build(Bench, {"iters": 0}, "benchmark")
    assert [p.key for p in excinfo.value.problems] == ["benchmark.iters"]


def test_post_init_config_error_at_top_level_not_prefixed():
    with pytest.raises(ConfigError) as excinfo:
        build(Bench, {"iters": -1})
    assert [p.key for p in excinfo.value.problems] == ["iters"]


def test_post_init_value_error_becomes_problem():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "window": {"low": 5, "high": 1}})
    (p,) = excinfo.value.problems
    assert p.key == "window"
    assert p.found == {"low": 5, "high": 1}
    assert "low must not exceed high" in p.hint


def test_post_init_value_error_at_top_level_uses_class_name():
    with pytest.raises(ConfigError) as excinfo:
        build(Window, {"low": 2, "high": 1})
    (p,) = excinfo.value.problems
    assert p.key == "Window"


def test_free_form_dict_passes_through():
    extra = {"anything": [1, 2, {"deep": None}], "flag": True, "n": 1.5}
    job = build(Job, {"name": "x", "extra": extra})
    assert job.extra == extra


def test_free_form_dict_rejects_non_mapping():
    with pytest.raises(ConfigError) as excinfo:
        build(Job, {"name": "x", "extra": [1, 2]})
    assert [p.key for p in excinfo.value.problems] == ["extra"]


def test_existing_instance_accepted_as_is():
    bench = Bench(iters=3)
    job = build(Job, {"name": "x", "benchmark": bench})
    assert job.benchmark is bench


def test_to_plain_converts_enums_and_tuples():
    job = Job(name="x", mode=Mode.COMPILED, stages=("load", "export"),
              benchmark=Bench(iters=4), extra={"k": [1, 2]})
    plain = to_plain(job)
    assert plain == {
        "name": "x",
        "mode": "compiled",
        "benchmark": {"iters": 4, "warmup": 2, "scale": 1.0},
        "window": {"low": 0, "high": 1},
        "stages": ["load", "export"],
        "seed": 0,
        "note": None,
        "extra": {"k": [1, 2]},
    }
    assert type(plain["mode"]) is str and not isinstance(plain["mode"], enum.Enum)
    assert type(plain["stages"]) is list


def test_round_trip_build_to_plain():
    job = Job(name="rt", mode=Mode.COMPILED, benchmark=Bench(iters=9, warmup=0, scale=0.5),
              window=Window(low=1, high=3), stages=("a", "b", "c"), seed=None, note="n",
              extra={"x": {"y": [1, "z"]}})
    assert build(Job, to_plain(job)) == job
