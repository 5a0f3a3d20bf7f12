"""Models and data coming in: weight files and state dicts (``weights``, ``state_dicts``),
Hugging Face directories (``hf``), data splits and their sources (``data``,
``datasources``, ``dataset_info``), calibration batches (``calibration``), and the audit
that keeps any of these files from running code (``archive_audit``).

May import: ``ptflow.core``.
"""
