"""The pyfunc loader of a .pt2 MLflow model that needs modules imported before it loads.

``code/ptflow_loader.py`` imports the modules of the export manifest entry's ``requires``
(PT2E's operator library, a model's output classes, torchao) and then re-exports
``mlflow.pytorch``'s own ``_load_pyfunc``. Its text depends only on that list, so the check
before registering or serving (``logged_model_check``) compares it byte for byte.
"""
from __future__ import annotations

import re

LOADER_MODULE = "ptflow_loader"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def loader_source(requires: list[str]) -> str:
    """The text of code/ptflow_loader.py for a .pt2 whose manifest entry requires these modules."""
    bad = [name for name in requires if not isinstance(name, str) or not _MODULE_NAME.match(name)]
    if bad:
        raise ValueError(f"not a module name: {bad[0]!r}")
    return ('"""Written by ptflow: import what this model\'s .pt2 needs registered (its export manifest\'s\n'
            '`requires`), then load it as mlflow.pytorch does."""\n'
            "import importlib\n\n"
            f"REQUIRES = {list(requires)!r}\n"
            "for _name in REQUIRES:\n"
            "    importlib.import_module(_name)\n\n"
            "from mlflow.pytorch import _load_pyfunc  # noqa: E402,F401\n")
