"""A Griffe extension for the API pages: show ``stages/`` as ``ptflow.stages``.

The repository keeps the stage packages in ``stages/``; pyproject maps that directory to
``ptflow.stages`` (``[tool.setuptools.package-dir]``). An editable install maps it the same
way for ``import``, but Griffe reads the editable finder's top-level paths only and would see
a package ``stages`` beside ``ptflow``. When ``ptflow`` is loaded without a ``stages``
member, this extension loads the directory the import system gives for ``ptflow.stages``
and attaches it under ``ptflow``, so ``::: ptflow.stages.quantize.registry`` resolves and
the pages show the import paths a plugin writes. A regular (non-editable) install already
has ``ptflow/stages/`` and is left alone.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import griffe


class PtflowStages(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.path != "ptflow" or "stages" in pkg.members:
            return
        spec = importlib.util.find_spec("ptflow.stages")
        if spec is None or not spec.submodule_search_locations:
            return
        directory = Path(next(iter(spec.submodule_search_locations)))
        stages = loader.load(directory)   # a path: the package in that directory, named after it
        pkg.set_member("stages", stages)
        loader.modules_collection.members.pop(directory.name, None)   # only as ptflow.stages
