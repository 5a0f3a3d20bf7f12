"""Keep known-harmless library noise off the console."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# torchao logs failures to load its CUDA-only kernels (and "no triton") on CPU machines;
# transformers imports torchao when it is installed
TORCHAO = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_torchao() -> Iterator[None]:
    """Loggers of torchao's import noise at ERROR while the block runs."""
    levels = {logging.getLogger(name): logging.getLogger(name).level for name in TORCHAO}
    for logger in levels:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
