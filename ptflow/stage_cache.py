"""A content-addressed cache of stage results, shared by the jobs of a sweep.

A stage's key is the sha256 of: the key of the stage before it, the stage's name and
config, its code version (the sha256 of the source of its module, and of every module a
``_target_`` in its config names: a user's model class edited in place is a new key),
the contents of every file its config names (weights, data files), the seed, the device
and the torch/torchao/ptflow/python versions. Two jobs with the same prefix of a
pipeline share its entries.

A stage opts in with ``cache = "memory"`` (its result is kept in this process for the
next job: the loaded model, whose form may not be serialisable without pickle; a hit
gets its own copy of the module) or ``cache = "disk"`` plus ``cache_save(artifact) ->
(tensors, meta)`` and ``cache_restore(artifact, tensors, meta) -> artifact`` (the
baseline reference: outputs on every eval batch, the task metric). Disk entries live in
``<outputs_dir>/cache/stages/<stage>/<key>/``: ``tensors.safetensors`` (no pickle) and
``meta.json``, which holds the tensors file's sha256. An entry is written into a
temporary dir and renamed into place, so parallel jobs never read half an entry and the
first writer wins; an entry whose hash does not match is moved aside and rebuilt.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.files import sha256_file

TENSORS, META = "tensors.safetensors", "meta.json"
FORMAT = 1          # of an entry; a new layout is a new key
HIT, MISS, REBUILT = "hit", "miss", "rebuilt"
# device settings that can change a stage's numbers, part of every key (threads are not:
# a sweep over threads shares its baseline; they change float sums in the last bits at most)
NUMERICS = ("device_name", "matmul_precision", "cudnn_benchmark", "deterministic_algorithms", "cudnn_deterministic")


@dataclass
class StageCache:
    """One run's view of the cache: where it lives and what each stage found."""

    root: Path
    outcomes: dict[str, str] = field(default_factory=dict)   # stage -> hit | miss | rebuilt
    discarded: dict[str, str] = field(default_factory=dict)  # stage -> why its entry was not trusted

    def key(self, upstream: str | None, stage: str, stage_cls: type, config: Mapping[str, Any],
            seed: int, device: str) -> str:
        parts = {"format": FORMAT, "upstream": upstream, "stage": stage, "config": config,
                 "code": code_version(stage_cls, config), "files": referenced_files(config),
                 "seed": seed, "device": device, "versions": versions()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    # -- memory ----------------------------------------------------------------------
    def remembered(self, stage: str, key: str) -> Any | None:
        held = _MEMORY.get(stage)
        return held[1] if held is not None and held[0] == key else None

    def remember(self, stage: str, key: str, value: Any) -> None:
        _MEMORY[stage] = (key, value)   # one per stage: the next job of a sweep, not a hoard

    # -- disk --------------------------------------------------------------------------
    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def read(self, stage: str, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tensors, meta) of a sound entry; None when absent. A corrupt entry is moved aside
        (outcome "rebuilt") and never read."""
        from safetensors.torch import load_file

        folder = self.entry(stage, key)
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            if meta.get("key") != key or meta.get("sha256") != sha256_file(folder / TENSORS):
                raise ValueError("its tensors do not match the sha256 in meta.json")
            return load_file(str(folder / TENSORS)), meta
        except Exception as error:   # truncated, edited, unreadable: rebuilt, never trusted
            self.outcomes[stage] = REBUILT
            self.discarded[stage] = (f"stage cache entry {folder} was corrupt ({type(error).__name__}: "
                                     f"{error}); not used, rebuilt by this run")
            _discard(folder)
            return None

    def write(self, stage: str, key: str, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Write the entry into a temp dir and rename it into place (first writer wins)."""
        from safetensors.torch import save_file

        parent = self.root / stage
        parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=parent))
        try:
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(scratch / TENSORS))
            full = {**meta, "key": key, "stage": stage, "sha256": sha256_file(scratch / TENSORS)}
            (scratch / META).write_text(json.dumps(full, indent=1, default=str) + "\n", encoding="utf-8")
            os.rename(scratch, self.entry(stage, key))
        except OSError:
            pass   # another job renamed the same entry in first, or the disk is full: a miss next time
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


_MEMORY: dict[str, tuple[str, Any]] = {}


def forget() -> None:
    """Drop what this process holds (tests; a caller that wants the memory back)."""
    _MEMORY.clear()


def _discard(folder: Path) -> None:
    """Move a corrupt entry aside (atomic: a parallel reader sees it whole or not at all), then delete it."""
    aside = folder.with_name(f"{folder.name}.corrupt-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except OSError:
        return   # another job moved it first
    shutil.rmtree(aside, ignore_errors=True)


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


def code_version(stage_cls: type, config: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of the stage's module source and of the module each `_target_` lives in."""
    targets = {stage_cls.__module__ + ".x"} | set(_targets(config))
    return {target: _module_digest(target) for target in sorted(targets)}


def _module_digest(target: str) -> str:
    """The source digest of the module a dotted target lives in: 'pkg.mod.fn' and
    'pkg.mod.Class.from_pretrained' both hash pkg/mod.py."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:cut]))
        except (ImportError, ValueError, AttributeError):
            continue
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            return _digest(spec.origin)
    return "unknown"


def referenced_files(config: Mapping[str, Any]) -> dict[str, str]:
    """What every existing file or directory a string of the config names holds (weights,
    data files, a Hugging Face model dir): a file's sha256; for a directory, the sha256 of
    each file's relative path, size and mtime (reading a model dir of gigabytes on every
    run would cost more than the cache saves; any write changes an mtime)."""
    from ptflow.targets import resolve_path

    found = {}
    for text in _strings(config):
        if "/" not in text and "." not in text:
            continue
        try:
            path = resolve_path(text)
        except (OSError, ValueError):
            continue
        if path.is_file():
            found[text] = _digest(str(path))
        elif path.is_dir():
            found[text] = _listing_digest(path)
    return found


def _listing_digest(folder: Path) -> str:
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def _digest(path: str) -> str:
    """A file's sha256, hashed once per process while its size and mtime stay the same."""
    stat = os.stat(path)
    return _digest_of(path, stat.st_size, stat.st_mtime_ns)


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


def run_cached(planned: Any, artifact: Any, ctx: Any, run: Any) -> tuple[Any, str | None]:
    """Run `planned`'s stage through the cache when it opts in and its upstream is keyed:
    (the result, its key or None). `run(ctx)` runs the stage for real. The warnings the
    stage gave when it ran are kept with the entry and given again on a hit."""
    import copy
    import dataclasses

    cache: StageCache | None = getattr(ctx, "cache", None)
    mode = getattr(planned.stage, "cache", None)
    upstream = artifact.lineage[-1].cache_key if artifact is not None and artifact.lineage else None
    if cache is None or mode not in ("memory", "disk") or (artifact is not None and upstream is None):
        return run(ctx), None
    from ptflow.typed import to_plain

    name = planned.name
    numerics = {k: ctx.settings.get(k) for k in NUMERICS}
    key = cache.key(upstream, name, type(planned.stage), to_plain(planned.config), ctx.seed,
                    json.dumps({"device": ctx.device, **numerics}, sort_keys=True, default=str))
    if mode == "memory":
        held = cache.remembered(name, key)
        if held is not None:
            stored, warnings = held
            try:
                module = copy.deepcopy(stored.module)
            except Exception:   # a module that cannot be copied: load it again
                module = None
            if module is not None:
                _replay(ctx, warnings)
                cache.outcomes[name] = HIT
                same = stored.model is stored.module
                return stored.evolve(module=module, model=module if same else stored.model,
                                     settings=dict(ctx.settings)), key
    else:
        found = cache.read(name, key)
        if found is not None:
            tensors, meta = found
            _replay(ctx, meta.get("warnings", []))
            cache.outcomes[name] = HIT
            return planned.stage.cache_restore(artifact, tensors, meta), key
    cache.outcomes.setdefault(name, MISS)
    if name in cache.discarded:
        ctx.warn(f"cache.{name}", cache.discarded[name])
    warnings: list[tuple[str, str]] = []

    def recording(key_: str, message: str) -> None:
        warnings.append((key_, message))
        ctx.warn(key_, message)

    result = run(dataclasses.replace(ctx, warn=recording))
    if mode == "memory":
        cache.remember(name, key, (result, warnings))
    else:
        tensors, meta = planned.stage.cache_save(result)
        cache.write(name, key, tensors, {**meta, "warnings": warnings})
    return result, key


def _replay(ctx: Any, warnings: Any) -> None:
    for key, message in warnings:
        ctx.warn(key, message)
