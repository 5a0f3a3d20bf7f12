"""`_target_` builders and resource paths, checked before anything heavy runs."""
from __future__ import annotations

import importlib
import importlib.resources
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptflow.errors import Problem, did_you_mean, first_line

PKG_SCHEME = "pkg://"


def origin_cwd() -> Path:
    """Where the user ran ptflow (a job with hydra.job.chdir=true runs elsewhere)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def resolve_path(text: str) -> Path:
    """``pkg://package/file`` -> a file shipped in a package; else a path (relative to cwd)."""
    if text.startswith(PKG_SCHEME):
        package, _, name = text[len(PKG_SCHEME):].partition("/")
        try:
            return Path(str(importlib.resources.files(package).joinpath(name)))
        except Exception as error:   # ModuleNotFoundError, or a package that fails to import
            raise FileNotFoundError(f"{text}: cannot find package '{package}' "
                                    f"({type(error).__name__}: {error})") from None
    from hydra.utils import to_absolute_path

    # relative to where the user ran ptflow, also when hydra.job.chdir=true moved the job
    return Path(to_absolute_path(str(Path(text).expanduser()))).resolve()


def _locate(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ImportError(f"'{dotted}' is not a dotted path like package.module.name")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise
    except Exception as error:   # a module that fails while importing: its own bug, named
        raise ImportError(f"importing module '{module_name}' raised {type(error).__name__}: "
                          f"{first_line(error)}") from None
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        hint = did_you_mean(attr, public)
        raise ImportError(f"module '{module_name}' has no '{attr}'" + (f"; {hint}" if hint else ""))
    return getattr(module, attr)


def check_target(spec: Mapping[str, Any] | None, key: str) -> list[Problem]:
    """Is `spec` a `_target_` node whose callable imports and accepts its keyword args?"""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        return [Problem(key, spec, "a mapping with '_target_: package.module.callable' and its kwargs")]
    try:
        target = _locate(str(spec["_target_"]))
    except ImportError as error:
        return [Problem(f"{key}._target_", spec["_target_"], "an importable callable", str(error))]
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        accepted = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
        unknown = [k for k in kwargs if k not in signature.parameters]
        hint = did_you_mean(unknown[0], accepted) if unknown else ""
        return [Problem(f"{key}.{unknown[0]}" if unknown else key, kwargs.get(unknown[0]) if unknown else kwargs,
                        f"arguments of {spec['_target_']}: " + ", ".join(accepted), hint or str(error))]
    return []


def instantiate(spec: Mapping[str, Any]) -> Any:
    """Build the object a `_target_` node describes (Hydra's instantiate, on plain data)."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(dict(spec), _convert_="all")
