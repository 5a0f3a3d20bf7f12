"""Tests for ptflow.runs.params: config -> MLflow params obeying MLflow's key/value rules."""
from __future__ import annotations

import json
import re

import pytest

from ptflow.runs.params import MAX_KEY, MAX_VALUE, flatten, sanitize_key, to_params

MLFLOW_KEY = re.compile(r"^[/\w.\- :]*$")


def test_nested_keys_joined_with_dots():
    flat = flatten({"a": {"b": {"c": "v"}, "d": "w"}, "e": "x"})
    assert flat == {"a.b.c": "v", "a.d": "w", "e": "x"}


def test_prefix_applied():
    assert flatten({"b": "v"}, "a") == {"a.b": "v"}


def test_list_of_scalars_is_one_json_value():
    flat = flatten({"pipeline": ["load", "validate"]})
    assert flat == {"pipeline": '["load", "validate"]'}
    assert json.loads(flat["pipeline"]) == ["load", "validate"]


def test_tuple_of_scalars_is_one_json_value():
    assert flatten({"shape": (1, 2, 3)}) == {"shape": "[1, 2, 3]"}


def test_list_of_mappings_indexed():
    flat = flatten({"a": [{"b": 1}, {"b": 2, "c": "x"}]})
    assert flat == {"a.0.b": "1", "a.1.b": "2", "a.1.c": "x"}


def test_nested_lists_indexed():
    flat = flatten({"m": [[1, 2], [3]]})
    assert flat == {"m.0": "[1, 2]", "m.1": "[3]"}


@pytest.mark.parametrize("value, text", [
    (None, "null"),
    (True, "true"),
    (False, "false"),
    (3, "3"),
    (2.5, "2.5"),
    ("plain", "plain"),
    ({}, "{}"),
    ([], "[]"),
])
def test_scalar_values_as_json_text(value, text):
    assert flatten({"k": value}) == {"k": text}


def test_sanitize_replaces_forbidden_characters():
    key = "a@b#c$d(e)f[g]h=i,j;k"
    clean = sanitize_key(key)
    assert MLFLOW_KEY.match(clean)
    assert len(clean) == len(key)
    assert clean == "a_b_c_d_e_f_g_h_i_j_k"


def test_sanitize_keeps_allowed_characters():
    key = "stage/quantize.config-1 x:y_z"
    assert sanitize_key(key) == key


def test_to_params_sanitizes_keys():
    params, _ = to_params({"opt!": {"lr*": 0.1}})
    assert params == {"opt_.lr_": "0.1"}
    assert all(MLFLOW_KEY.match(k) for k in params)


def test_long_key_shortened():
    key = "k" * 400
    clean = sanitize_key(key)
    assert len(clean) <= MAX_KEY
    assert clean.startswith("k" * 200)


def test_two_long_keys_stay_different():
    a = "x" * 300 + "a"
    b = "x" * 300 + "b"
    ca, cb = sanitize_key(a), sanitize_key(b)
    assert len(ca) <= MAX_KEY and len(cb) <= MAX_KEY
    assert ca != cb
    assert sanitize_key(a) == ca  # deterministic


def test_key_of_exactly_max_length_kept():
    key = "y" * MAX_KEY
    assert sanitize_key(key) == key


def test_long_key_still_matches_mlflow_regex():
    clean = sanitize_key("section." * 60)
    assert len(clean) <= MAX_KEY
    assert MLFLOW_KEY.match(clean)


def test_long_values_moved_out():
    long_value = "v" * (MAX_VALUE + 1)
    params, long_values = to_params({"a": {"big": long_value}, "small": "ok"})
    assert long_values == {"a.big": long_value}
    assert params["small"] == "ok"
    pointer = params["a.big"]
    assert len(pointer) < 100
    assert str(MAX_VALUE + 1) in pointer
    assert "params_long.json" in pointer


def test_value_at_limit_kept():
    value = "v" * MAX_VALUE
    params, long_values = to_params({"a": value})
    assert params == {"a": value}
    assert long_values == {}


def test_long_list_value_moved_out():
    items = list(range(3000))
    params, long_values = to_params({"ids": items})
    assert json.loads(long_values["ids"]) == items
    assert len(params["ids"]) < 100
