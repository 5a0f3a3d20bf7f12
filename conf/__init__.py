"""Hydra config tree; installed as the ptflow.conf package (see pyproject.toml [tool.setuptools.package-dir])."""
