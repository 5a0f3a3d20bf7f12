"""Flatten a resolved config into MLflow params that obey MLflow's rules."""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

MAX_KEY = 250
MAX_VALUE = 6000
_BAD_KEY_CHARS = re.compile(r"[^\w.\-/ :]")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': 'value'}; lists of scalars stay one JSON value."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, path))
        else:
            flat[path] = _text(value)
    return flat


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def sanitize_key(key: str) -> str:
    """MLflow keys allow only [\\w.-/ :] and at most 250 chars; keep long keys unique."""
    clean = _BAD_KEY_CHARS.sub("_", key)
    if len(clean) > MAX_KEY:
        digest = hashlib.sha256(clean.encode()).hexdigest()[:12]
        clean = f"{clean[: MAX_KEY - 13]}-{digest}"
    return clean


def to_params(config: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(params for MLflow, long values that belong in an artifact instead)."""
    params: dict[str, str] = {}
    long_values: dict[str, str] = {}
    for key, value in flatten(config).items():
        key = sanitize_key(key)
        if len(value) > MAX_VALUE:
            long_values[key] = value
            value = f"<{len(value)} chars: see artifact params_long.json>"
        params[key] = value
    return params, long_values
