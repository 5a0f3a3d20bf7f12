"""What a stage cache key is made of: the contents of the files a config names, the code a
stage runs (followed through the project's own imports) and the library versions.

Everything is hashed by content, never trusted by size or mtime: a file rewritten with the
same size and mtime is a new key. ``ContentHasher`` belongs to one run (one ``StageCache``)
and hashes each file once per run; no digest outlives the run, so a weights file changed
during a sweep is seen by the next job.

Code: the key holds the sha256 of the stage's module and of the module every ``_target_``
of its config lives in, and of every *project* module those import, transitively. Imports
are read with ``ast`` (``import``/``from ... import``, relative ones, those inside
functions) and resolved to ``<root>/a/b/c.py`` or ``<root>/a/b/c/__init__.py`` without
importing anything. The project roots are the directory ptflow was run from and the
``sys.path`` root of each of those modules that is not inside site-packages or the
standard library: a user's ``layers.py`` next to ``mymodels.py`` and an editable ptflow
checkout's own modules are followed; an installed package is not (its version is in the
key). Imports made by name at run time (``importlib.import_module(name)``) are not seen.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import platform
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.core.files import sha256_file

LIBRARY_DIRS = frozenset({"site-packages", "dist-packages"})


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "torchao", "ptflow", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "none"
    return found


@dataclass(frozen=True)
class SourceModule:
    """A module found on disk: its dotted name, its file, whether it is a package, and (for a
    module found by importlib) the sys.path root its top-level package is imported from."""

    name: str
    path: Path
    package: bool
    root: Path | None = None

    @property
    def package_name(self) -> str:
        """The package its relative imports start from."""
        return self.name if self.package else self.name.rpartition(".")[0]


@dataclass
class ContentHasher:
    """One run's file and import digests: each file is read and hashed at most once per run."""

    _files: dict[Path, str] = field(default_factory=dict)
    _imports: dict[Path, tuple[str, ...]] = field(default_factory=dict)

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        if path not in self._files:
            self._files[path] = sha256_file(path)
        return self._files[path]

    def directory(self, folder: Path) -> str:
        """sha256 of every file's relative path and content sha256 (a Hugging Face model dir)."""
        entries = []
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(root, name)
                try:
                    digest = self.file(path)
                except OSError:   # a dangling link, an unreadable file: still part of the listing
                    digest = "unreadable"
                entries.append((path.relative_to(folder).as_posix(), digest))
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()

    def referenced_files(self, config: Mapping[str, Any]) -> dict[str, str]:
        """The content digest of every existing file or directory a string of the config names."""
        from ptflow.core.targets import resolve_path

        found = {}
        for text in _strings(config):
            if "/" not in text and "." not in text:
                continue
            try:
                path = resolve_path(text)
                if path.is_file():
                    found[text] = self.file(path)
                elif path.is_dir():
                    found[text] = self.directory(path)
            except (OSError, ValueError):
                continue
        return found

    def code_version(self, stage_cls: type, config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
        """{"targets": the source digest of the stage's module and of each `_target_`'s module,
        "imports": the digest of every project module they import, transitively}."""
        from ptflow.core.targets import origin_cwd

        targets = sorted({stage_cls.__module__ + ".x"} | set(_targets(config)))
        modules = {target: _module_of(target) for target in targets}
        roots = [origin_cwd().resolve()]
        project = [m for m in modules.values() if m is not None and m.root is not None and not _is_library(m.root)]
        roots += [r for r in dict.fromkeys(m.root for m in project) if r not in roots]
        # where the project's packages are, also one mapped elsewhere (package-dir: ptflow.stages -> stages/)
        packages = {m.package_name: m.path.parent for m in project if m.package_name}
        return {"targets": {t: self.file(m.path) if m else "unknown" for t, m in modules.items()},
                "imports": self._follow([m for m in modules.values() if m is not None], roots, packages)}

    def _follow(self, start: list[SourceModule], roots: list[Path], packages: dict[str, Path]) -> dict[str, str]:
        """module name -> digest of every project module `start` imports, transitively."""
        visited = {m.path for m in start}
        queue, digests = list(start), {}
        while queue:
            module = queue.pop()
            for name in self._imported_names(module):
                found = _find(name, roots, packages)
                if found is not None and found.path not in visited:
                    visited.add(found.path)
                    digests[name] = self.file(found.path)
                    queue.append(found)
                    if found.package:
                        packages.setdefault(found.name, found.path.parent)
        return digests

    def _imported_names(self, module: SourceModule) -> tuple[str, ...]:
        """Every dotted name `module` imports, each parent package included ('a', 'a.b', 'a.b.c')."""
        if module.path not in self._imports:
            try:
                tree = ast.parse(module.path.read_bytes(), filename=str(module.path))
            except (OSError, SyntaxError, ValueError):
                tree = ast.Module(body=[], type_ignores=[])   # its own digest still keys it
            names: dict[str, None] = {}
            for node in ast.walk(tree):
                for name in _names_of(node, module):
                    parts = name.split(".")
                    names.update(dict.fromkeys(".".join(parts[:n]) for n in range(1, len(parts) + 1)))
            self._imports[module.path] = tuple(names)
        return self._imports[module.path]


def _names_of(node: ast.AST, module: SourceModule) -> list[str]:
    """The absolute module names one import statement may load (a `from` import's names may be
    submodules or attributes: both are tried, and only files that exist are followed)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = module.package_name.split(".") if module.package_name else []
        if node.level > len(parts):
            return []   # beyond the top-level package: Python refuses it too
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    if not base:
        return []
    return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]


def _find(name: str, roots: list[Path], packages: dict[str, Path]) -> SourceModule | None:
    """The project file of module `name`: in its package's known dir, else <root>/a/b/c(.py)."""
    parent, _, last = name.rpartition(".")
    places = [packages[name]] if name in packages else []
    places += [packages[parent] / last] if parent in packages else []
    places += [root.joinpath(*name.split(".")) for root in roots]
    for base in places:
        if name not in packages and (found := base.with_name(base.name + ".py")).is_file():
            return SourceModule(name, found, False)
        if (found := base / "__init__.py").is_file():
            return SourceModule(name, found, True)
    return None


def _module_of(target: str) -> SourceModule | None:
    """The module a dotted target lives in: 'pkg.mod.fn' and 'pkg.mod.Class.from_pretrained'
    both give pkg/mod.py (found by importlib, which imports the parent packages)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            continue
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            return SourceModule(name, Path(spec.origin).resolve(), spec.submodule_search_locations is not None,
                                _sys_path_root(name.split(".")[0]))
    return None


def _sys_path_root(top: str) -> Path | None:
    """The directory top-level package (or module) `top` is imported from (already imported:
    it is the parent of a module just found)."""
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if spec.origin and os.path.isfile(spec.origin):
        origin = Path(spec.origin).resolve()
        return origin.parent.parent if spec.submodule_search_locations is not None else origin.parent
    locations = list(spec.submodule_search_locations or [])   # a namespace package
    return Path(locations[0]).resolve().parent if locations else None


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def _is_library(root: Path) -> bool:
    """Inside site-packages or the standard library: an installed package, keyed by its version."""
    return bool(LIBRARY_DIRS & set(root.parts)) or any(root.is_relative_to(lib) for lib in _library_roots())


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if isinstance(target, str):
            yield target
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _targets(value)
