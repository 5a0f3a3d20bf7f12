"""How a run ends when it is stopped: signals, and processes that vanish without a word.

SIGINT (Ctrl-C) and SIGTERM (`kill`, Docker, Kubernetes, SLURM) raise ``Interrupted``
in the main thread, so the stack unwinds through every ``finally`` (partial files are
removed, the run is recorded KILLED); a second signal exits at once. A process killed
with SIGKILL or by the out-of-memory killer cannot clean up, so each run records a
``ProcessId``: later, any ptflow process on the same host can tell the run's process is
gone and close the run (see ``ptflow.runs.stale``).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so code that handles Ctrl-C handles this too."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum


def as_interrupted(error: BaseException) -> Interrupted:
    """A plain KeyboardInterrupt (no handler installed) counts as SIGINT."""
    return error if isinstance(error, Interrupted) else Interrupted(signal.SIGINT)


class _State:
    received: int | None = None   # the first signal, once one arrived
    pending: bool = False         # it arrived inside `protected()` and is yet to be raised
    depth: int = 0                # nesting of `protected()`


_STATE = _State()


def install() -> None:
    """Route SIGINT/SIGTERM to ``Interrupted`` (main thread only: Python's rule for handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED:
        signal.signal(signum, _handle)


def reset() -> None:
    """Forget an earlier signal (a process that runs several jobs, e.g. a joblib worker)."""
    _STATE.received, _STATE.pending, _STATE.depth = None, False, 0


_LAST_WORDS: list[Callable[[], None]] = []


def before_exit_now(fn: Callable[[], None]) -> None:
    """Register a quick clean-up (removing partial files) run even on a second signal."""
    _LAST_WORDS.append(fn)


def _handle(signum: int, frame: object) -> None:
    if _STATE.received is not None:
        for fn in _LAST_WORDS:
            try:
                fn()
            except Exception:
                pass
        os.write(2, f"ptflow: second {signal.Signals(signum).name}: exiting now\n".encode())
        os._exit(128 + signum)
    _STATE.received = signum
    if _STATE.depth:
        _STATE.pending = True     # raised when the protected section ends
        return
    raise Interrupted(signum)


@contextmanager
def protected() -> Iterator[None]:
    """Let the final record be written before a first signal takes effect (a second still
    exits at once). A signal that arrived inside is raised on leaving."""
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
    if _STATE.depth == 0 and _STATE.pending:
        _STATE.pending = False
        raise Interrupted(_STATE.received or signal.SIGINT)


# -- which process a run belongs to -------------------------------------------------------

@dataclass(frozen=True)
class ProcessId:
    """Which process, on which machine: host, pid, boot and the pid's start time (a pid alone
    is reused after a restart), the machine id (two machines may share a hostname) and the
    pid namespace (a container with the host's network sees neither the host's pids nor
    they its own)."""

    host: str
    pid: int
    boot: str
    started: str
    machine: str = ""
    pidns: str = ""

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.boot}:{self.started}:{self.machine}:{self.pidns}"

    @classmethod
    def parse(cls, text: str) -> "ProcessId | None":
        try:
            host, pid, boot, started, *rest = text.split(":")
            return cls(host, int(pid), boot, started, *rest[:2])
        except (ValueError, AttributeError, TypeError):
            return None

    def is_alive(self) -> bool | None:
        """True/False for a process this one can see; None when that cannot be known here
        (another host or machine, another pid namespace): such runs are never closed."""
        here = current_process()
        if self.host != here.host or self.pidns != here.pidns:
            return None
        if self.boot != here.boot:           # boot ids are random per boot: another boot, or machine
            return False if self.machine and self.machine == here.machine else None
        started = _start_ticks(self.pid)
        if started is not None:
            return started == self.started
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True   # some process holds the pid; without its start time, assume it is ours


def current_process() -> ProcessId:
    pid = os.getpid()
    return ProcessId(socket.gethostname(), pid, _read("/proc/sys/kernel/random/boot_id"),
                     _start_ticks(pid) or "", _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id"),
                     _pid_namespace())


def wait_until_gone(processes: list[ProcessId], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.is_alive() for p in processes):
        time.sleep(0.1)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()   # the command name may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None
