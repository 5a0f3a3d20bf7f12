"""Where the `ptflow` command starts: the config tree it composes from, and Hydra's own
parser of its command line. Imported by the command line, the override checks, the help
text and ``ptflow-reproduce``; imports nothing of ptflow (no torch: ``ptflow --help``
answers at once)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

# conf/ ships as the package ptflow.conf (pyproject maps it): a real directory in wheel and editable installs.
CONFIG_DIR = Path(os.environ.get("PTFLOW_CONFIG_DIR") or resources.files("ptflow.conf"))


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line as Hydra reads it (overrides, -cp/-cn, --multirun, --cfg ...)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(argv))
