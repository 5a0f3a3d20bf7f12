"""Writing files so that a crash, a signal or a full disk never leaves one half-written,
and claiming directories so that two processes never share one."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ptflow.core import lifecycle

# Errors that mean "the disk (or this process's share of it) is full".
NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file size limit exceeded"}
_ADVICE = {errno.EFBIG: "raise the file size limit (ulimit -f), or write smaller files"}
# How libraries that do their own I/O (sqlite, safetensors' Rust writer) say the same.
DISK_FULL_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded", "os error 28")
MIN_FREE_MB = 4.0   # free space a run needs where it records itself: its record, the reserve, mlflow.db's journal
PARTIAL_NAME = re.compile(r"^\..+\.partial-(?P<pid>\d+)(\.[^/]*)?$")   # .model.pt2.partial-12, .model.partial-12.pt2
CLAIM_FILE = ".ptflow-claim"
MAX_CLAIM_TRIES = 10_000
_PARTIAL: set[Path] = set()   # files being written now: removed even if the process must exit at once


def _remove_partials() -> None:
    for path in list(_PARTIAL):
        path.unlink(missing_ok=True)


lifecycle.before_exit_now(_remove_partials)


@contextmanager
def partial_file(path: Path) -> Iterator[Path]:
    """A temporary file being written: removed when the block ends (renamed files are gone
    already), or by a second signal's exit, so no half-written file outlives the process."""
    _PARTIAL.add(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        _PARTIAL.discard(path)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write under a hidden temporary name, then rename: readers see the old file or the
    whole new one. The temporary file is removed on any failure (disk full, a signal)."""
    with partial_file(path.with_name(f".{path.name}.partial-{os.getpid()}")) as partial, named_errors(path):
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data, encoding="utf-8")
        os.replace(partial, path)


@contextmanager
def named_errors(path: Path) -> Iterator[None]:
    """OSErrors from writes (which name no file) re-raised naming `path`."""
    try:
        yield
    except OSError as error:
        if error.filename:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def claim_dir(path: Path, taken_if: Iterable[str] = ()) -> Path:
    """Make `path` this process's own directory, or `path-1`, `path-2`, ... if it is taken.

    A directory is taken when it holds a claim file (created with O_EXCL, so exactly one
    process wins it) or any of `taken_if` (records of runs from before claims existed).
    """
    markers = tuple(taken_if)
    for n in range(MAX_CLAIM_TRIES):
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        if candidate.exists() and not candidate.is_dir():
            continue
        candidate.mkdir(parents=True, exist_ok=True)
        if any((candidate / name).exists() for name in markers):
            continue
        try:
            handle = os.open(candidate / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.write(handle, f"{os.getpid()} {uuid.uuid4().hex}\n".encode())   # pid, then a unique id
        os.close(handle)
        return candidate
    raise FileExistsError(f"{path} and {MAX_CLAIM_TRIES - 1} numbered variants are all taken")


def no_space(error: BaseException | None) -> OSError | None:
    """The disk-full OSError behind `error` (following causes), if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error
        error = error.__cause__ or error.__context__
    return None


def describe_disk_full(error: BaseException, where: Path | str) -> str | None:
    """One line for `error` if it means the disk is full — an OSError behind it, or a library's
    own writer saying so (sqlite's "database or disk is full", safetensors' "No space left on
    device (os error 28)") — naming the file, else `where`; None for any other error."""
    full = no_space(error)
    if full is not None:
        return describe_no_space(full, where)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        said = next((line.strip() for line in str(error).splitlines()
                     if any(text in line for text in DISK_FULL_TEXTS)), None)
        if said:
            return (f"no space left on device writing {where} ({said}): free space there, or point outputs_dir "
                    "(and export.dir) at a disk with room")
        error = error.__cause__ or error.__context__
    return None


def room_problem(places: Iterable[Path], need_mb: float = MIN_FREE_MB) -> str | None:
    """Why a run cannot record itself at `places` (too little free space on one of their file
    systems), or None. Each file system is looked at once; a place that does not exist yet is
    judged by its nearest existing parent."""
    seen: set[int] = set()
    for place in places:
        existing = _nearest_existing(Path(place))
        try:
            device = existing.stat().st_dev if existing else None
            free_mb = shutil.disk_usage(existing).free / 1e6 if existing else None
        except OSError:
            continue
        if device is None or device in seen:
            continue
        seen.add(device)
        if free_mb < need_mb:
            return (f"no space left on {place}: {free_mb:.2f} MB free, and a run needs {need_mb:g} MB there to "
                    "record itself (its run record, the MLflow store); free space there, or point outputs_dir "
                    "at a disk with room")
    return None


def remove_partials(pid: int, run_dir: Path, shared: Iterable[Path] = ()) -> tuple[int, int]:
    """Remove the hidden partial files (write_atomic's, the export's) that process `pid` left:
    anywhere under `run_dir` (the run's own), and directly in each of the `shared` folders
    (an export.dir other runs may use: skipped while some process holds that pid, for it may
    be writing there now). Returns (files removed, bytes freed)."""
    found = [p for p in Path(run_dir).rglob("*.partial-*")] if Path(run_dir).is_dir() else []
    if not _pid_in_use(pid):
        found += [p for folder in shared if Path(folder).is_dir() for p in Path(folder).glob(".*.partial-*")]
    count = freed = 0
    for path in dict.fromkeys(found):
        match = PARTIAL_NAME.match(path.name)
        if not match or int(match["pid"]) != pid or path.is_symlink() or not path.is_file():
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        count, freed = count + 1, freed + size
    return count, freed


def _pid_in_use(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def describe_no_space(error: OSError, fallback: Path | str | None = None) -> str:
    where = error.filename or fallback or "a file"
    advice = _ADVICE.get(error.errno, "free space there, or point outputs_dir (and export.dir) at a "
                                      "disk with room")
    detail = f" ({error.strerror})" if error.strerror and error.strerror.lower() not in NO_SPACE[error.errno] else ""
    return f"{NO_SPACE[error.errno]} writing {where}{detail}: {advice}"


def creatable_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a writable directory, or None. Leaves nothing behind:
    after the permission check (which says yes to root everywhere), a directory is made and
    removed in the nearest existing parent, because only trying tells (/proc, /sys, a
    read-only mount, a full disk)."""
    probe = _nearest_existing(path)
    if probe is None:
        return f"no existing parent of {path}"
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    read_only = " (read-only file system)" if _read_only_fs(probe) else ""
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user{read_only}"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ptflow-probe-", dir=probe))
    except OSError as error:
        return f"{probe} does not take new directories ({error.strerror or error}){read_only}"
    return None


def _nearest_existing(path: Path) -> Path | None:
    probe = Path(path)
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    return probe


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
