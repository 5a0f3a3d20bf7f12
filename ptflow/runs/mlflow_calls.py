"""MLflow client calls made quiet: MLflow prints progress lines ("🏃 View run …") and logs
at INFO on its own; ptflow's summary already says what they would. Used by the tracker,
the sweep's parent run, stale-run closing and ``ptflow-compare``; imports nothing of ptflow.
"""
from __future__ import annotations

import contextlib
import io
import logging
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
