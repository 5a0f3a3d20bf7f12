"""One timed section per device at a time, across processes: a sweep's jobs build in
parallel but never time at once.

A CPU run holds one lock per core it may run on (its affinity set), taken in core order,
so jobs pinned to disjoint cores time side by side while overlapping ones take turns; a
CUDA run holds the lock of its GPU index. The locks are ``flock``-style files (the
``filelock`` package): the kernel drops them when the holder dies, so a SIGKILLed job
never blocks the next. They live in one directory per machine and user,
``$PTFLOW_LOCK_DIR`` or ``<tmp>/ptflow-locks-<uid>``, so separate ``ptflow`` commands
(other outputs dirs included) respect each other too.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR_ENV = "PTFLOW_LOCK_DIR"
REPORT_EVERY_S = 10.0   # say "waiting for ..." this often while another job times


@dataclass
class Held:
    """What the lock cost: the wait, when timing could start and when it ended (epoch s)."""

    names: tuple[str, ...]
    wait_s: float = 0.0
    acquired_at: float = 0.0
    released_at: float | None = None
    holders: list[str] = field(default_factory=list)   # who held it when we started waiting


def lock_dir() -> Path:
    configured = os.environ.get(LOCK_DIR_ENV)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"ptflow-locks-{uid}"


def lock_names(device: str, cpus: Sequence[int] | None = None) -> tuple[str, ...]:
    """The locks a timed section on `device` needs: 'cuda-<index>', or 'cpu-<n>' per core."""
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        return (f"cuda-{index}",)
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return tuple(f"cpu-{n}" for n in sorted(set(cpus)))


@contextlib.contextmanager
def timed_section(device: str, cpus: Sequence[int] | None = None, owner: str = "",
                  report: Callable[[str], None] | None = None, enabled: bool = True) -> Iterator[Held]:
    """Hold every lock of `device` for the block; `Held` says how long it waited."""
    from filelock import FileLock, Timeout

    names = lock_names(device, cpus)
    held = Held(names)
    if not enabled:
        held.acquired_at = time.time()
        yield held
        held.released_at = time.time()
        return
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last_report = started
    with contextlib.ExitStack() as stack:
        for name in names:   # in a fixed order: two jobs never hold each other's next lock
            lock = FileLock(str(directory / f"{name}.lock"))
            while True:
                try:
                    lock.acquire(timeout=1.0)
                    break
                except Timeout:
                    if not held.holders:
                        held.holders.append(_holder(directory / f"{name}.owner"))
                    now = time.perf_counter()
                    if report is not None and now - last_report >= REPORT_EVERY_S:
                        report(f"waiting {now - started:.0f} s for {name} "
                               f"(timed by {held.holders[0] or 'another ptflow job'})")
                        last_report = now
            stack.callback(lock.release)
            _write_owner(directory / f"{name}.owner", owner)
        held.wait_s = time.perf_counter() - started
        held.acquired_at = time.time()
        try:
            yield held
        finally:
            held.released_at = time.time()


def _write_owner(path: Path, owner: str) -> None:
    try:
        path.write_text(f"{owner or os.getpid()}\n", encoding="utf-8")
    except OSError:
        pass   # who holds it is only for the waiting message


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
