"""What this process's launch has found out so far: written by the pre-flight once it has
checked every job, read by the command line once Hydra returns (or is stopped) and by the
sweep's batch check. ``cli.run`` starts each launch with a fresh ``Launch``; read it as
``launch.LAUNCH`` (a name imported from here would keep the previous launch's)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Launch:
    """What the command needs once Hydra returns."""

    mode: str | None = None           # "run" or "multirun", once checked
    dir: Path | None = None           # the claimed run or sweep dir
    expected: int | None = None       # jobs in the sweep; None when the sweeper decides as it goes
    stores: list[tuple[str, str]] = field(default_factory=list)   # (tracking URI, experiment id)
    checked: frozenset[tuple[str, ...]] = frozenset()   # jobs composed and planned here (basic sweeper)
    rerun: bool = False               # Hydra's --experimental-rerun: the job gets a run dir of its own
    argv: tuple[str, ...] = ()        # the command line as typed after `ptflow` (a sweep's parent keeps it)


LAUNCH = Launch()
