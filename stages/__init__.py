"""Stage implementations: a module for a one-module stage (``load``, ``validate``), a package
per family (``quantize``, ``compile``, ``export``, ``benchmark``: the stage in ``stage.py``,
its registry in ``registry.py``, one module per technology beside them). Registered through
the ``ptflow.stages`` entry points; ptflow never imports this package by name.

May import: every ptflow package; never OmegaConf or Hydra.
"""
