"""ptflow: declarative, compiler-style pipelines that make PyTorch models fast for
inference and prove they did not get worse.

One package per concern, each allowed to import only the ones before it:
``core`` (the compiler), ``inputs`` (models and data in), ``zoo`` (the bundled models),
``measure`` (the latency protocol and device settings), ``decide`` (gate, fidelity,
ranking), ``runs`` (the run record and MLflow), ``app`` (the ``ptflow`` command) and
``review`` (``ptflow-compare``, ``ptflow-reproduce``). The stages live in ``ptflow.stages``
and are found through entry points. ``tests/test_architecture.py`` keeps the order.
"""

from ptflow import moved

__version__ = "0.1.0"
moved.install()   # old module paths (ptflow.hf, ptflow.stage, ...) still import, with a FutureWarning
