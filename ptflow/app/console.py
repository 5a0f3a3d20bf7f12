"""The terminal shows the user's run; what libraries say goes to the run's log file.

torch, torchao, onnxscript, transformers and MLflow log and warn about themselves on an
ordinary run — torchao's "Failed to load …so" on a CPU machine, pytree deprecations,
``_flat_weights`` notes, a 30-line FX graph dump when a guard fails. None of it is about the
user's run, and it buries ptflow's own lines. For the job's duration:

- Python warnings become log records (``logging.captureWarnings``); one raised from inside an
  installed library reaches only the log file, one from the user's code or ptflow the console too;
- torch's own stderr handlers are taken off its loggers, which then propagate to the root
  handlers: the log file gets torch's records, the console does not (unless the user asked for
  them with ``TORCH_LOGS``, which is left alone);
- the console handler passes only ptflow's, Hydra's and ``__main__``'s records.

Everything stays in ``<run dir>/ptflow.log``; ``hydra.verbose=true`` does not change this filter
(it is about ptflow's own debug lines).
"""
from __future__ import annotations

import logging
import os
import sys
import sysconfig
from pathlib import Path

OWN = frozenset({"ptflow", "hydra", "__main__"})


class RunRecordsOnly(logging.Filter):
    """A console handler's filter: ptflow's, Hydra's and the user's records, no library's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            return not _from_a_library(str(record.args[0]) if record.args else str(record.msg))
        return record.name.split(".")[0] in OWN


def _library_dirs() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")}
    return tuple(str(Path(p).resolve()) for p in paths if p)


def _from_a_library(formatted: str) -> bool:
    """Whether a formatted warning ('<file>:<line>: Category: message') was raised in an
    installed library (site-packages or the standard library), not ptflow."""
    file = formatted.split(":", 1)[0]
    if not file.startswith(os.sep):
        return False   # '<string>', a module name ('ptflow.datasources'): the user's or ptflow's
    resolved = str(Path(file).resolve())
    own = str(Path(__file__).resolve().parents[1])
    return resolved.startswith(_library_dirs()) and not resolved.startswith(own)


def library_noise_to_log_file() -> None:
    """Route library logs and warnings away from the console (see the module docstring).
    Call after Hydra configured the job's logging; calling it again is harmless."""
    import torch  # noqa: F401 - torch sets its handlers up on import: take them off after

    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and not any(isinstance(f, RunRecordsOnly) for f in handler.filters):
            handler.addFilter(RunRecordsOnly())
    if os.environ.get("TORCH_LOGS"):
        return
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.split(".")[0] != "torch":
            continue
        streams = [h for h in logger.handlers if type(h) is logging.StreamHandler
                   and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        for handler in streams:
            logger.removeHandler(handler)
        if streams:
            logger.propagate = True
