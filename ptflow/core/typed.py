"""Plain config data -> frozen dataclasses, collecting every problem instead of stopping at one.

This is the boundary where configs stop being OmegaConf/dict data: stages only ever
receive the dataclass instances built here.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from ptflow.core.errors import ConfigError, Problem, did_you_mean

_MISSING = dataclasses.MISSING


def build(cls: type, data: object, path: str = "") -> Any:
    """Build dataclass `cls` from plain `data`; raise one ConfigError listing every problem."""
    problems: list[Problem] = []
    value = _convert(cls, data, path, problems)
    if problems:
        raise ConfigError(problems)
    return value


def to_plain(value: object) -> object:
    """Dataclasses/enums/tuples -> JSON-ready dicts, strings and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: object) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: object, path: str, problems: list[Problem]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path, problems)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, problems)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        for member in tp:
            if value == member.value or value is member:
                return member
        problems.append(Problem(path, value, "one of " + ", ".join(map(repr, allowed)),
                                did_you_mean(value, allowed)))
        return None
    if origin in (tuple, list):
        return _convert_sequence(tp, origin, value, path, problems)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            problems.append(Problem(path, value, "a mapping of key: value"))
            return None
        args = typing.get_args(tp) or (str, Any)
        return {k: _convert(args[1], v, _join(path, k), problems) for k, v in value.items()}
    return _convert_scalar(tp, value, path, problems)


def _convert_union(tp: Any, value: object, path: str, problems: list[Problem]) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        problems.append(Problem(path, None, _type_name(tp)))
        return None
    candidates = [a for a in args if a is not type(None)]
    if len(candidates) == 1:   # Optional[X]: X's own problem is the precise one
        return _convert(candidates[0], value, path, problems)
    for arg in candidates:
        trial: list[Problem] = []
        converted = _convert(arg, value, path, trial)
        if not trial:
            return converted
    problems.append(Problem(path, value, _type_name(tp)))
    return None


def _convert_sequence(tp: Any, origin: type, value: object, path: str,
                      problems: list[Problem]) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        problems.append(Problem(path, value, f"a list ({_type_name(tp)})"))
        return None
    args = typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            problems.append(Problem(path, value, f"a list of {len(args)} items"))
            return None
        items = [_convert(a, v, _join(path, i), problems) for i, (a, v) in enumerate(zip(args, value))]
    else:
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, _join(path, i), problems) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(tp: Any, value: object, path: str, problems: list[Problem]) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        problems.append(Problem(path, value, _type_name(tp)))
        return None
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(value, str) and tp in (int, float, bool):
        converted = _from_text(tp, value)   # e.g. ${oc.env:SEED}: text, as env vars are
        if converted is not None:
            return converted
    problems.append(Problem(path, value, _type_name(tp)))
    return None


def _from_text(tp: type, text: str) -> Any:
    """`text` as OmegaConf's typed nodes would take it for `tp` ('3' -> 3, 'yes' -> True), or None."""
    from omegaconf.errors import ValidationError
    from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode

    node = {int: IntegerNode, float: FloatNode, bool: BooleanNode}[tp]
    try:
        return node(text)._value()
    except ValidationError:
        return None


def _convert_dataclass(cls: type, value: object, path: str, problems: list[Problem]) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        problems.append(Problem(path or cls.__name__, value, f"a mapping for {cls.__name__}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    start = len(problems)
    for key in value:
        if key not in fields:
            problems.append(Problem(_join(path, key), value[key],
                                    f"a key of {cls.__name__}: " + ", ".join(fields),
                                    did_you_mean(key, fields) or "remove it"))
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(path, name), problems)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            problems.append(Problem(_join(path, name), "<missing>", f"a value ({_type_name(hints[name])})",
                                    "this key is required"))
    if len(problems) > start:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as error:
        problems.extend(error.prefixed(path).problems if path else error.problems)
    except (ValueError, TypeError) as error:
        problems.append(Problem(path or cls.__name__, dict(value), "a valid combination", str(error)))
    return None
