"""MLflow client calls made quiet: MLflow prints progress lines ("🏃 View run …") and logs
at INFO on its own; ptflow's summary already says what they would. Used by the tracker,
the sweep's parent run, stale-run closing and ``ptflow-compare``; imports nothing of ptflow.
Also the retry of a write that lost an insert race to another job sharing the store.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any


@contextlib.contextmanager
def mlflow_quiet():
    """MLflow's own progress lines (stderr prints, INFO/WARNING logs) off for a block."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def set_terminated(client: Any, run_id: str, status: str) -> None:
    """End an MLflow run. MLflow writes "🏃 View run … / 🧪 View experiment …" to stdout when
    it ends a run on a server, once per job; ptflow's summary already names the run and the UI."""
    with contextlib.redirect_stdout(io.StringIO()):
        client.set_terminated(run_id, status=status)


# what a store says when two writers insert the same unique row at once (postgres, sqlite, mysql)
LOST_RACE = ("duplicate key value violates unique constraint", "unique constraint failed", "duplicate entry")
RACE_RETRIES = 6


def lost_insert_race(error: BaseException) -> bool:
    """Whether a failed write lost a race with another writer over a unique row. MLflow's
    ``log_inputs`` looks a dataset up and inserts it when missing, in one transaction: two
    jobs of a parallel sweep logging the same eval data can both miss it, and the later insert
    then fails (on a server, as a BAD_REQUEST naming the constraint). The row now exists, so
    the same call made again finds it."""
    return any(marker in str(error).lower() for marker in LOST_RACE)


def retry_lost_race(call, *args: Any, attempts: int = RACE_RETRIES, pause_s: float = 0.05) -> Any:
    """``call(*args)``, made again (up to ``attempts`` times, with a short growing pause) while
    it fails only because another writer inserted the same row first. Only for idempotent
    calls; any other failure is raised at once."""
    for attempt in range(1, attempts):
        try:
            return call(*args)
        except Exception as error:
            if not lost_insert_race(error):
                raise
            time.sleep(pause_s * attempt)
    return call(*args)
