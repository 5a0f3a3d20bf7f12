"""`_target_` builders and resource paths, checked before anything heavy runs.

A builder may tell the pre-flight more about itself with ``@builder_traits(...)``: a check
of its arguments (a directory that must hold config.json, a file that must hold the named
keys), whether it loads trained weights itself, whether the data it makes is synthetic.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.resources
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptflow.core.errors import Problem, did_you_mean, first_line

PKG_SCHEME = "pkg://"
TRAITS_ATTRIBUTE = "__ptflow_traits__"


@dataclass(frozen=True)
class BuilderTraits:
    """What ptflow may know about a `_target_` builder before calling it."""

    # check(key, kwargs) -> problems of these arguments, keyed under `key` (e.g. model.builder)
    check: Callable[[str, Mapping[str, Any]], list[Problem]] | None = None
    loads_weights: bool = False   # a model builder that loads trained weights itself (model.weights: null)
    synthetic: bool = False       # a data builder that makes its data up: numbers are latency-only
    # no_targets(kwargs) -> why the data has no targets with these arguments (None: it has them)
    no_targets: Callable[[Mapping[str, Any]], str | None] | None = None


def builder_traits(**traits: Any) -> Callable[[Callable], Callable]:
    """Decorator: attach BuilderTraits to a builder function."""
    def decorate(fn: Callable) -> Callable:
        setattr(fn, TRAITS_ATTRIBUTE, BuilderTraits(**traits))
        return fn

    return decorate


def traits_of(spec: Mapping[str, Any] | None) -> BuilderTraits:
    """The traits of a `_target_` node's callable; the defaults when it has none or does not
    import (check_target reports that)."""
    try:
        target = _locate(str(spec["_target_"]))  # type: ignore[index]
    except Exception:
        return BuilderTraits()
    return getattr(target, TRAITS_ATTRIBUTE, None) or BuilderTraits()


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
    module_name, attr = _split(dotted)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        _not_found(module_name, error)
    except ImportError:
        raise
    except Exception as error:   # a module that fails while importing: its own bug, named
        raise ImportError(f"importing module '{module_name}' raised {type(error).__name__}: "
                          f"{first_line(error)}") from None
    if not hasattr(module, attr):
        _no_attribute(module_name, attr, dir(module))
    return getattr(module, attr)


def _find(dotted: str) -> None:
    """`_locate` without running the module: ImportError unless it can be found and its source
    defines `attr` at the top level. A module whose names cannot be read off its source (compiled,
    a star import, a module ``__getattr__``) passes: importing it will tell."""
    module_name, attr = _split(dotted)
    try:   # imports the module's parent packages (not the module)
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError as error:
        _not_found(module_name, error)
    except Exception as error:   # a parent package that fails while importing
        raise ImportError(f"importing the package of '{module_name}' raised {type(error).__name__}: "
                          f"{first_line(error)}") from None
    if spec is None:
        _not_found(module_name, ModuleNotFoundError(f"No module named '{module_name}'", name=module_name))
    names = _top_level_names(spec)
    if names is not None and attr not in names:
        _no_attribute(module_name, attr, names)


def _top_level_names(spec: importlib.machinery.ModuleSpec) -> set[str] | None:
    """The names a module's source binds at its top level, or None when they cannot be known."""
    import ast

    origin = spec.origin
    if spec.submodule_search_locations is not None or not origin or not origin.endswith(".py"):
        return None   # a package (its submodules are names too) or not Python source
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None   # importing it will say what is wrong
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    # ast.walk sees nested definitions too: a name defined only inside a function passes here
    # and fails when imported, never the other way round
    return None if "__getattr__" in names else names


def _split(dotted: str) -> tuple[str, str]:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ImportError(f"'{dotted}' is not a dotted path like package.module.name")
    return module_name, attr


def _not_found(module_name: str, error: ModuleNotFoundError) -> None:
    top = module_name.split(".")[0]
    if error.name != top:
        raise error
    where = origin_cwd()
    if (where / f"{top}.py").is_file() or (where / top / "__init__.py").is_file():
        raise ImportError(f"{error}, though {where} holds it: that directory is not on the import path "
                          "(the ptflow command puts it there unless PYTHONSAFEPATH is set); unset "
                          f"PYTHONSAFEPATH, or set PYTHONPATH={where}") from None
    raise ImportError(f"{error}: it is neither an installed package nor a module in {where}, "
                      f"where ptflow imports your own modules from ({top}.py or {top}/); run "
                      "ptflow from the directory that holds it, or pip install its package") from None


def _no_attribute(module_name: str, attr: str, names) -> None:
    public = [n for n in names if not n.startswith("_")]
    hint = did_you_mean(attr, public)
    raise ImportError(f"module '{module_name}' has no '{attr}'" + (f"; {hint}" if hint else ""))


def check_target(spec: Mapping[str, Any] | None, key: str, imports: bool = True) -> list[Problem]:
    """Is `spec` a `_target_` node whose callable imports and accepts its keyword args?
    With ``imports=False``: only whether its module can be found and defines the name, read
    from the source without running it (its arguments need the callable: not checked)."""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        return [Problem(key, spec, "a mapping with '_target_: package.module.callable' and its kwargs")]
    try:
        if not imports:
            _find(str(spec["_target_"]))
            return []
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
    check = getattr(target, TRAITS_ATTRIBUTE, BuilderTraits()).check
    if check is None:
        return []
    try:
        return check(key, kwargs)
    except Exception as error:   # the builder's own check must not crash the pre-flight
        return [Problem(key, spec["_target_"], "a pre-flight check of its arguments that completes",
                        f"{type(error).__name__}: {first_line(error)}")]


def instantiate(spec: Mapping[str, Any]) -> Any:
    """Build the object a `_target_` node describes (Hydra's instantiate, on plain data)."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(dict(spec), _convert_="all")
