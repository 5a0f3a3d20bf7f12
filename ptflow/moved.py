"""The module paths of ptflow before its package layout, and where each module lives now.

Configs, stored runs and plugins name ptflow's modules by path (``_target_:
ptflow.hf.from_pretrained``, ``from ptflow.stage import register_stage``). Those paths keep
working: importing an old path gives the module at its new one (the same module object)
and says once, as a FutureWarning, which path to write instead. Installed by
``ptflow/__init__.py``; imports nothing of ptflow.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "ptflow.errors": "ptflow.core.errors",
    "ptflow.artifact": "ptflow.core.artifact",
    "ptflow.spec": "ptflow.core.spec",
    "ptflow.stage": "ptflow.core.stage",
    "ptflow.typed": "ptflow.core.typed",
    "ptflow.plan": "ptflow.app.settings",
    "ptflow.engine": "ptflow.core.engine",
    "ptflow.stage_cache": "ptflow.core.stage_cache",
    "ptflow.cache_key": "ptflow.core.cache_key",
    "ptflow.targets": "ptflow.core.targets",
    "ptflow.files": "ptflow.core.files",
    "ptflow.lifecycle": "ptflow.core.lifecycle",
    "ptflow.weights": "ptflow.inputs.weights",
    "ptflow.state_dicts": "ptflow.inputs.state_dicts",
    "ptflow.hf": "ptflow.inputs.hf",
    "ptflow.data": "ptflow.inputs.data",
    "ptflow.datasources": "ptflow.inputs.datasources",
    "ptflow.dataset_info": "ptflow.inputs.dataset_info",
    "ptflow.calibration": "ptflow.inputs.calibration",
    "ptflow.archive_audit": "ptflow.inputs.archive_audit",
    "ptflow.quiet": "ptflow.inputs.quiet",
    "ptflow.stats": "ptflow.measure.stats",
    "ptflow.device": "ptflow.measure.device",
    "ptflow.device_info": "ptflow.measure.device_info",
    "ptflow.device_lock": "ptflow.measure.device_lock",
    "ptflow.modelinfo": "ptflow.measure.modelinfo",
    "ptflow.plots": "ptflow.measure.plots",
    "ptflow.accuracy": "ptflow.decide.accuracy",
    "ptflow.fidelity": "ptflow.decide.fidelity",
    "ptflow.objective": "ptflow.decide.objective",
    "ptflow.compare": "ptflow.decide.compare",
    "ptflow.compare_select": "ptflow.decide.compare_select",
    "ptflow.pareto": "ptflow.decide.pareto",
    "ptflow.record": "ptflow.runs.record",
    "ptflow.tracking": "ptflow.runs.tracking",
    "ptflow.tracker": "ptflow.runs.tracker",
    "ptflow.mlflow_models": "ptflow.runs.mlflow_models",
    "ptflow.mlflow_datasets": "ptflow.runs.mlflow_datasets",
    "ptflow.logged_model_check": "ptflow.runs.logged_model_check",
    "ptflow.params": "ptflow.runs.params",
    "ptflow.naming": "ptflow.runs.naming",
    "ptflow.stale": "ptflow.runs.stale",
    "ptflow.sweep_parent": "ptflow.runs.sweep_parent",
    "ptflow.summary": "ptflow.runs.summary",
    "ptflow.runs_cli": "ptflow.runs.runs_cli",
    "ptflow.cli": "ptflow.app.cli",
    "ptflow.preflight": "ptflow.app.preflight",
    "ptflow.overrides": "ptflow.app.overrides",
    "ptflow.usage": "ptflow.app.usage",
    "ptflow.sweep": "ptflow.app.sweep",
    "ptflow.job": "ptflow.app.job",
    "ptflow.compare_cli": "ptflow.review.compare_cli",
    "ptflow.reproduce": "ptflow.review.reproduce",
    "ptflow.reproduce_check": "ptflow.review.reproduce_check",
    "ptflow.reproduce_trust": "ptflow.review.reproduce_trust",
    "ptflow.stages.benchmark_passes": "ptflow.stages.benchmark.passes",
    "ptflow.stages.benchmark_profile": "ptflow.stages.benchmark.profile",
    "ptflow.stages.benchmark_roofline": "ptflow.stages.benchmark.roofline",
    "ptflow.stages.benchmark_timing": "ptflow.stages.benchmark.timing",
    "ptflow.stages.compile_inductor": "ptflow.stages.compile.inductor",
    "ptflow.stages.compile_legacy": "ptflow.stages.compile.legacy",
    "ptflow.stages.compile_runtimes": "ptflow.stages.compile.runtimes",
    "ptflow.stages.export_example": "ptflow.stages.export.example",
    "ptflow.stages.export_formats": "ptflow.stages.export.registry",
    "ptflow.stages.export_portable": "ptflow.stages.export.portable",
    "ptflow.stages.export_torch": "ptflow.stages.export.torch_formats",
    "ptflow.stages.quantize_cast": "ptflow.stages.quantize.cast",
    "ptflow.stages.quantize_legacy": "ptflow.stages.quantize.legacy",
    "ptflow.stages.quantize_pt2e": "ptflow.stages.quantize.pt2e",
    "ptflow.stages.quantize_torchao": "ptflow.stages.quantize.torchao",
}


def canonical(dotted: str) -> str:
    """`dotted` (a module or a name in one) with a moved module's old path replaced by its new one."""
    for old, new in MOVED.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return dotted


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return None   # a throwaway module; exec_module puts the real one in its place

    def exec_module(self, module) -> None:
        # named by the old path, not by importlib's frame (an import from a config has no line of its own)
        warnings.warn_explicit(f"{module.__name__} is now {self.new} (ptflow's package layout); the old path "
                               f"still works, but write {self.new}", FutureWarning, module.__name__, 0)
        # importlib returns what sys.modules holds once exec_module returns: the module itself
        sys.modules[module.__name__] = importlib.import_module(self.new)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
