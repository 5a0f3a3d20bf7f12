"""A content-addressed cache of stage results, shared by the jobs of a sweep.

A stage's key is the sha256 of: the key of the stage before it, the stage's name and
config, its code (the source of its module, of every module a ``_target_`` in its config
names, and of every project module those import: ``ptflow.core.cache_key``), the contents of
every file or directory its config names, the seed, the device and the torch/torchao/
ptflow/python versions. Everything is hashed by content, once per run. Two jobs with the
same prefix of a pipeline share its entries.

A stage opts in with ``cache = "memory"`` (its result is kept in this process for the
next job: the loaded model, whose form may not be serialisable without pickle; a hit
gets its own copy of the module) or ``cache = "disk"`` plus ``cache_save`` and
``cache_restore``, and optionally ``cache_check`` (see ``ptflow.core.stage.Stage``). Disk
entries live in ``<outputs_dir>/cache/stages/<stage>/<key>/``: ``tensors.safetensors``
(no pickle) and ``meta.json``, sealed by a sha256 over all its other fields, the tensors
file's sha256 among them. An entry is written into a temporary dir named after its
writer's pid and renamed into place, so parallel jobs never read half an entry and the
first writer wins; the temp dir of a writer that died is removed by a later run. An
entry that fails its seal, or the stage's check of a hit, is moved aside and rebuilt with
a warning. A cache dir that cannot be read or written makes the run do without it (one
warning), never fail.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptflow.core.cache_key import ContentHasher, versions
from ptflow.core.errors import first_line

TENSORS, META = "tensors.safetensors", "meta.json"
FORMAT = 2          # of an entry and its key; a new layout is a new key
HIT, MISS, REBUILT = "hit", "miss", "rebuilt"
# device settings that can change a stage's numbers, part of every key (threads are not:
# a sweep over threads shares its baseline; they change float sums in the last bits at most)
NUMERICS = ("device_name", "matmul_precision", "cudnn_benchmark", "deterministic_algorithms", "cudnn_deterministic")
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]
# .<key16>-<pid>-<host>-<8 random>: an entry being written (or a corrupt one moved aside);
# .<key16>-<8 random>: one from a ptflow before pids were in the name
SCRATCH = re.compile(r"^\.[0-9A-Za-z]{1,16}-(?:(\d+)-([A-Za-z0-9]*)-)?[a-z0-9_]{8}$")
STALE_S = 60                 # a temp dir of a dead writer on this host, older than this, is removed
FOREIGN_STALE_S = 24 * 3600  # one whose writer cannot be asked (another host, no pid): after a day


@dataclass
class StageCache:
    """One run's view of the cache: where it lives, what each stage found, and whether the
    dir could be used at all (``problem``, warned once)."""

    root: Path
    outcomes: dict[str, str] = field(default_factory=dict)   # stage -> hit | miss | rebuilt
    discarded: dict[str, str] = field(default_factory=dict)  # stage -> why its entry was not trusted
    problem: str | None = None                               # why the dir cannot be read or written
    hasher: ContentHasher = field(default_factory=ContentHasher, repr=False)   # this run's file digests
    _told: bool = field(default=False, repr=False)
    _swept: set[Path] = field(default_factory=set, repr=False)

    def key(self, upstream: str | None, stage: str, stage_cls: type, config: Mapping[str, Any],
            seed: int, device: str) -> str:
        parts = {"format": FORMAT, "upstream": upstream, "stage": stage, "config": config,
                 "code": self.hasher.code_version(stage_cls, config),
                 "files": self.hasher.referenced_files(config),
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
        """(tensors, meta) of a sealed entry; None when absent or the dir cannot be read. A
        corrupt entry is moved aside (outcome "rebuilt") and never read."""
        from safetensors.torch import load

        folder = self.entry(stage, key)
        self._sweep(folder.parent)
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            return None
        except OSError as error:   # the cache dir itself: unreadable, or a file where a dir should be
            self._unusable(error, folder)
            return None
        if not stat.S_ISDIR(mode):
            return self.reject(stage, folder, "was corrupt (a file, not an entry dir)")
        try:
            meta_bytes, data = (folder / META).read_bytes(), (folder / TENSORS).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as error:   # half an entry: no ptflow wrote it
            return self.reject(stage, folder, f"was corrupt ({type(error).__name__}: {error})")
        except OSError as error:
            self._unusable(error, folder)
            return None
        try:
            meta = json.loads(meta_bytes)
            why = _unsealed(meta, key, data)
            if why is not None:
                raise ValueError(why)
            return load(data), meta
        except Exception as error:   # truncated, edited, not JSON: rebuilt, never trusted
            return self.reject(stage, folder, f"was corrupt ({type(error).__name__}: {first_line(error)})")

    def write(self, stage: str, key: str, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Write the entry into a temp dir and rename it into place (first writer wins)."""
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
        sealed = _seal({**meta, "key": key, "stage": stage, "tensors_sha256": hashlib.sha256(data).hexdigest()})
        parent, scratch = self.root / stage, None
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._sweep(parent)
            scratch = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-{os.getpid()}-{HOST}-", dir=parent))
            (scratch / TENSORS).write_bytes(data)
            (scratch / META).write_text(json.dumps(sealed, indent=1) + "\n", encoding="utf-8")
            os.rename(scratch, self.entry(stage, key))
        except OSError as error:   # unless another job renamed the same entry in first: nothing wrong then
            if not (error.errno in (errno.EEXIST, errno.ENOTEMPTY) and os.path.isdir(self.entry(stage, key))):
                self._unusable(error, parent)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def reject(self, stage: str, folder: Path, why: str) -> None:
        """Do not trust the entry in `folder`: move it aside, delete it, say why (outcome "rebuilt")."""
        self.outcomes[stage] = REBUILT
        self.discarded[stage] = f"stage cache entry {folder} {why}; not used, rebuilt by this run"
        aside = folder.with_name(f".{folder.name[:16]}-{os.getpid()}-{HOST}-{os.urandom(4).hex()}")
        try:
            os.rename(folder, aside)   # atomic: a parallel reader sees the entry whole or not at all
        except FileNotFoundError:
            return                     # another job moved it first
        except OSError as error:
            self._unusable(error, folder)
            return
        _remove(aside)

    def untold_problem(self) -> str | None:
        """Why the cache dir cannot be used, the first time it is asked (one warning per run)."""
        if self.problem is None or self._told:
            return None
        self._told = True
        return self.problem

    def _unusable(self, error: OSError, path: Path) -> None:
        if self.problem is None:
            where = error.filename or path
            self.problem = (f"the stage cache at {self.root} cannot be used ({type(error).__name__} on {where}: "
                            f"{error.strerror or error}); this run goes on without it (its stages run, nothing "
                            "is kept). Make it a writable dir (permissions, free space, no file in its place), or set "
                            "cache=off to bypass it")

    def _sweep(self, parent: Path) -> None:
        """Remove the temp dirs of writers that died (SIGKILL) from `parent`, once per run:
        on this host, a dead pid's older than STALE_S; others, older than FOREIGN_STALE_S."""
        if parent in self._swept:
            return
        self._swept.add(parent)
        try:
            items = list(os.scandir(parent))
        except OSError:   # no stage dir yet, or one that cannot be listed: housekeeping waits
            return
        now = time.time()
        for item in items:
            match = SCRATCH.match(item.name)
            if match is None:
                continue
            try:
                age = now - item.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if match[1] is not None and match[2] == HOST:
                stale = age > STALE_S and not _alive(int(match[1]))
            else:
                stale = age > FOREIGN_STALE_S
            if stale:
                _remove(Path(item.path))


_MEMORY: dict[str, tuple[str, Any]] = {}


def forget() -> None:
    """Drop what this process holds (tests; a caller that wants the memory back)."""
    _MEMORY.clear()


def _seal(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` as JSON data plus "sha256", the digest of all of them."""
    plain = json.loads(json.dumps(fields, default=str))
    return {**plain, "sha256": _fields_digest(plain)}


def _fields_digest(meta: Mapping[str, Any]) -> str:
    fields = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _unsealed(meta: Any, key: str, data: bytes) -> str | None:
    """Why an entry's meta and tensors are not the ones its writer sealed; None when they are."""
    if not isinstance(meta, dict) or meta.get("sha256") != _fields_digest(meta):
        return "meta.json does not match its own sha256: edited after it was written"
    if meta.get("key") != key:
        return "it was written under another key"
    if meta.get("tensors_sha256") != hashlib.sha256(data).hexdigest():
        return "its tensors do not match the sha256 in meta.json"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # PermissionError: another user's live process
        pass
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


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
    from ptflow.core.typed import to_plain

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
        restored = _restore(planned.stage, artifact, cache, name, key, found) if found is not None else None
        if restored is not None:
            _replay(ctx, found[1].get("warnings", []))
            cache.outcomes[name] = HIT
            return restored, key
    cache.outcomes.setdefault(name, MISS)
    if name in cache.discarded:
        ctx.warn(f"cache.{name}", cache.discarded[name])
    _tell_problem(ctx, cache)
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
        _tell_problem(ctx, cache)
    return result, key


def _restore(stage: Any, artifact: Any, cache: StageCache, name: str, key: str,
             found: tuple[dict[str, Any], dict[str, Any]]) -> Any | None:
    """The stage's result from a sealed entry, once the stage's own check of the hit (if it
    has one) passed; None, with the entry rejected, when the check or the restore fails."""
    tensors, meta = found
    check = getattr(stage, "cache_check", None)
    try:
        why = check(artifact, tensors, meta) if check is not None else None
        if why is None:
            return stage.cache_restore(artifact, tensors, meta)
    except Exception as error:   # an entry the stage cannot read back is not trusted either
        why = f"{type(error).__name__}: {first_line(error)}"
    cache.reject(name, cache.entry(name, key), f"does not match this run ({why})")
    return None


def _tell_problem(ctx: Any, cache: StageCache) -> None:
    """Warn that the cache dir cannot be used, once per run."""
    problem = cache.untold_problem()
    if problem is not None:
        ctx.warn("cache", problem)


def _replay(ctx: Any, warnings: Any) -> None:
    for key, message in warnings:
        ctx.warn(key, message)
