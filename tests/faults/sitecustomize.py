"""Fault injection for the ptflow processes that the fault tests start (test-only).

The tests put this folder on PYTHONPATH and set PTFLOW_TEST_FAULT; Python imports this
module at start-up, before ptflow, and patches the standard library — never ptflow — so
the faults look to ptflow exactly like the real ones:

  enospc:<text>            opening a file for writing whose path holds <text> fails with
                           ENOSPC, as on a full disk
  enospcafter:<mark>:<text>|<text>...
                           the same for paths holding any <text>, once a file whose path
                           holds <mark> was opened for writing: a disk that fills up mid-run
  readonly:<text>          paths holding <text> are not writable (os.access says so, and
                           opening them for writing fails with EACCES), as for a user
                           without write permission
  diskfree:<MB>            shutil.disk_usage reports only <MB> free
  slowwrite:<text>:<mark>  each write to a file whose path holds <text> takes 0.3 s, and the
                           first creates the file <mark>, so a test can signal mid-write
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import time

_SPEC = os.environ.get("PTFLOW_TEST_FAULT", "")
_KIND, _, _ARG = _SPEC.partition(":")
_open = io.open


def _writing(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


def _matches(file: object) -> bool:
    if not isinstance(file, (str, os.PathLike)):
        return False
    if _KIND == "enospcafter":
        return _full_after(os.fspath(file))
    return _ARG.split(":")[0] in os.fspath(file)


_FILLED = []   # enospcafter: the mark was written, the disk is full from now on


def _full_after(path: str) -> bool:
    mark, _, texts = _ARG.partition(":")
    if _FILLED:
        return any(text in path for text in texts.split("|"))
    if mark in path:
        _FILLED.append(path)
    return False


def _patched_open(file, mode="r", *args, **kwargs):
    if _writing(mode) and _matches(file):
        if _KIND in ("enospc", "enospcafter"):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(file))
        if _KIND == "readonly":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        if _KIND == "slowwrite":
            return _Slow(_open(file, mode, *args, **kwargs))
    return _open(file, mode, *args, **kwargs)


class _Slow:
    """A file whose writes are slow; marks the first one."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        mark = _ARG.split(":", 1)[1]
        if not os.path.exists(mark):
            _open(mark, "w").close()
        time.sleep(0.3)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


_os_open = os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _patched_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS and _matches(path):
        code, text = (errno.ENOSPC, "No space left on device") if _KIND in ("enospc", "enospcafter") else \
            (errno.EACCES, "Permission denied")
        raise OSError(code, text, os.fspath(path))
    return _os_open(path, flags, *args, **kwargs)


if _KIND in ("enospc", "enospcafter", "readonly", "slowwrite"):
    builtins.open = io.open = _patched_open
if _KIND in ("enospc", "enospcafter", "readonly"):
    os.open = _patched_os_open   # tempfile and other low-level writers

if _KIND == "readonly":
    _access = os.access

    def _patched_access(path, mode, *args, **kwargs):
        if mode & os.W_OK and _matches(path):
            return False
        return _access(path, mode, *args, **kwargs)

    os.access = _patched_access

if _KIND == "diskfree":
    _usage = shutil.disk_usage

    def _patched_usage(path):
        total, used, _ = _usage(path)
        return type(_usage(path))(total, used, int(float(_ARG) * 1e6))

    shutil.disk_usage = _patched_usage
