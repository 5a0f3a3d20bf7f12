"""A config fetched from a tracking store is untrusted input: what would it run here?

Anyone who can write to a shared MLflow store — through its REST API alone — can replace a
run's ``config.yaml`` artifact or log a new FINISHED run. ``ptflow-reproduce`` runs that
config, and a config is code: every ``_target_`` is a callable Hydra instantiates
(``torch.load`` with ``weights_only=false`` unpickles, ``ptflow.core.files.write_atomic`` writes
any file), and every ``plugins`` entry is a module imported. So before anything runs —
the dry run and the pre-flight included, since both import target modules — every target
and plugin is judged against an allowlist:

- ptflow's own builders and data sources (every ``_target_`` of ptflow's shipped configs,
  and the builders it marks with ``@builder_traits``) are allowed;
- the user's patterns (``--allow-target 'mymodels.*'``, or ``allow_targets`` under
  ``[tool.ptflow.reproduce]`` in ``./pyproject.toml``) allow their own modules;
- some are never allowed, whatever the patterns say: anything in ``os``, ``subprocess``,
  ``builtins``, ``importlib``, ``shutil``, ``pickle`` and their kin, every other ``ptflow``
  callable (its file writers among them), loaders that unpickle or load native code
  (``torch.export.load``, AOTInductor packages, and any callable given ``weights_only=false``,
  ``allow_pickle=true`` or ``trust_remote_code=true``), and Hydra's own instantiate/call;
- a ``pkg://package/file`` path imports its package: judged as a plugin (ptflow's own allowed);
- a stored ``model.trust_pickle=true`` (or ``model.format=pickle``) needs the user's own
  ``--trust-pickle``; a stored ``defaults`` list (ptflow never logs one) is refused.
"""
from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptflow.core.targets import PKG_SCHEME
from ptflow.moved import canonical

# Builders ptflow marks with @builder_traits (tests/test_reproduce_trust.py keeps this in sync).
PTFLOW_BUILDERS = frozenset({"ptflow.inputs.datasources.tensor_file", "ptflow.inputs.datasources.random_inputs",
                             "ptflow.inputs.hf.from_pretrained"})
NEVER_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "builtins", "__builtin__", "importlib", "shutil", "pickle", "_pickle",
    "marshal", "runpy", "ctypes", "sys", "io", "pathlib", "tempfile", "pty", "socket", "code", "codeop",
    "multiprocessing", "concurrent", "asyncio", "signal", "dill", "cloudpickle", "joblib", "hydra", "omegaconf",
    "functools", "operator", "types", "inspect", "gc", "atexit", "webbrowser", "urllib", "http", "requests",
    "setuptools", "pip", "distutils", "zipimport", "pkgutil", "site", "sysconfig", "mlflow", "yaml",
})
NEVER_TARGETS = ("torch.export.load", "torch.export.pt2_archive.*", "torch._inductor.aoti_load_package",
                 "torch._export.aot_load", "torch.package.*", "torch.hub.*", "torch.utils.cpp_extension.*",
                 "torch.ops.load_library", "pandas.read_pickle", "numpy.load.*")
# arguments that make a loader run code from its file: never, whichever callable takes them
CODE_SWITCHES = {"weights_only": False, "allow_pickle": True, "trust_remote_code": True}


@dataclass(frozen=True)
class Judged:
    """One thing the config would run: where it is, what it names, and the verdict."""

    key: str          # model.builder._target_, plugins[0], model.trust_pickle
    name: str
    allowed: bool
    why: str

    def render(self, width: int) -> str:
        return f"  {'allowed' if self.allowed else 'REFUSED':<8} {self.key:<{width}} {self.name}  ({self.why})"


def _packages(node: Any, key: str) -> Iterator[tuple[str, str]]:
    """(key, package) for every pkg://package/file string: resolving one imports the package."""
    if isinstance(node, str) and node.startswith(PKG_SCHEME):
        yield key, node[len(PKG_SCHEME):].partition("/")[0]
    elif isinstance(node, Mapping):
        for child, value in node.items():
            yield from _packages(value, f"{key}.{child}" if key else str(child))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _packages(value, f"{key}[{index}]")


def _walk(node: Any, key: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(key, node) for every `_target_` node of the config."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield key, node
        for child, value in node.items():
            yield from _walk(value, f"{key}.{child}" if key else str(child))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, f"{key}[{index}]")


@functools.lru_cache(maxsize=1)
def shipped_targets() -> frozenset[str]:
    """Every `_target_` named by ptflow's own config tree, and ptflow's marked builders."""
    from omegaconf import OmegaConf

    from ptflow.app.args import CONFIG_DIR

    found = set(PTFLOW_BUILDERS)
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        try:
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:   # a broken shipped file is reported by the pre-flight, not here
            continue
        found.update(str(n["_target_"]) for _, n in _walk(node, ""))
    return frozenset(found)


def _never(name: str, node: Mapping[str, Any] | None) -> str | None:
    """Why `name` may never run from a stored config, whatever the user allows; or None."""
    top = name.split(".", 1)[0]
    if top in NEVER_MODULES:
        return f"in module '{top}': never run from a stored config"
    if top == "ptflow" and name not in shipped_targets():
        return "a ptflow function that is not a builder or data source (its file writers among them)"
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in NEVER_TARGETS):
        return "a loader that unpickles or loads native code"
    for option, bad in CODE_SWITCHES.items():
        value = (node or {}).get(option)
        if value is not None and str(value).lower() == str(bad).lower():
            return f"{option}={value} runs code from the file it loads"
    return None


def judge_name(key: str, name: str, patterns: Sequence[str], node: Mapping[str, Any] | None = None,
               builtin: bool = True) -> Judged:
    now = canonical(name)   # a run recorded before ptflow's package layout names the old module path
    never = _never(now, node)
    if never:
        return Judged(key, name, False, never)
    if builtin and now in shipped_targets():
        return Judged(key, name, True, "a ptflow builder or data source")
    match = next((p for p in patterns if any(fnmatch.fnmatchcase(n, p) or n == p for n in {name, now})), None)
    if match:
        return Judged(key, name, True, f"allowed by pattern {match!r}")
    return Judged(key, name, False, "not in the allowlist")


def judge_config(config: Mapping[str, Any], patterns: Sequence[str], trust_pickle: bool) -> list[Judged]:
    """Every target, plugin and code-running switch of `config`, judged."""
    judged = [judge_name(f"{key}._target_", str(node["_target_"]), patterns, node) for key, node in _walk(config, "")]
    for index, plugin in enumerate(config.get("plugins") or []):
        judged.append(judge_name(f"plugins[{index}]", str(plugin), patterns, builtin=False))
    for key, package in _packages(config, ""):   # ptflow's own packages hold its shipped files
        judged.append(Judged(key, f"pkg://{package}", True, "ptflow's own package data") if package.split(".")[0]
                      == "ptflow" else judge_name(key, package, patterns, builtin=False))
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    if model.get("trust_pickle") is True or str(model.get("format")) == "pickle":
        judged.append(Judged("model.trust_pickle", "true", trust_pickle,
                             "unpickles model.weights: allowed by --trust-pickle" if trust_pickle else
                             "unpickling runs code from the file: pass --trust-pickle if you trust it"))
    if "defaults" in config:
        judged.append(Judged("defaults", "a defaults list", False, "ptflow never logs one: the config was edited"))
    return judged


def user_patterns(given: Sequence[str], project: Path) -> tuple[list[str], str | None]:
    """The patterns of --allow-target plus [tool.ptflow.reproduce] allow_targets in
    <project>/pyproject.toml; and a note when that file could not be read."""
    patterns = [p.strip() for p in given if p.strip()]
    path = project / "pyproject.toml"
    if not path.is_file():
        return patterns, None
    try:
        import tomllib
    except ImportError:   # Python 3.10
        return patterns, f"{path} not read (Python 3.11+ reads TOML): use --allow-target"
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("ptflow", {}).get("reproduce", {})
    except (OSError, ValueError) as error:
        return patterns, f"{path} not read: {error}"
    listed = table.get("allow_targets", [])
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        return patterns, f"{path}: [tool.ptflow.reproduce] allow_targets must be a list of strings"
    return patterns + listed, None


def report(judged: Sequence[Judged]) -> str:
    width = max([len(j.key) for j in judged] or [0])
    return "\n".join(j.render(width) for j in judged)
