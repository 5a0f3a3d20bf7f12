"""The ``ptflow`` command: the command line and Hydra glue (``cli``, ``args``,
``config_tree``, ``usage``, ``overrides``), the pre-flight that checks every job before
any runs (``preflight``, ``launch``, ``settings``), one job from config to record
(``job``) and the end of a sweep (``sweep``).

May import: every package below it (``core``, ``inputs``, ``measure``, ``decide``, ``runs``).
"""
