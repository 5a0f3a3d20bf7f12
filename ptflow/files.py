"""Writing files so that a crash, a signal or a full disk never leaves one half-written,
and claiming directories so that two processes never share one."""
from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ptflow import lifecycle

# Errors that mean "the disk (or this process's share of it) is full".
NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file size limit exceeded"}
_ADVICE = {errno.EFBIG: "raise the file size limit (ulimit -f), or write smaller files"}
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


def describe_no_space(error: OSError, fallback: Path | None = None) -> str:
    where = error.filename or fallback or "a file"
    advice = _ADVICE.get(error.errno, "free space there, or point outputs_dir (and export.dir) at a "
                                      "disk with room")
    detail = f" ({error.strerror})" if error.strerror and error.strerror.lower() not in NO_SPACE[error.errno] else ""
    return f"{NO_SPACE[error.errno]} writing {where}{detail}: {advice}"


def creatable_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a writable directory, or None. Creates nothing."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"no existing parent of {path}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user" + (" (read-only file system)"
                                                            if _read_only_fs(probe) else "")
    return None


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
