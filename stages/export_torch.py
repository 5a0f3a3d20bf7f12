"""torch's own export formats: pt2 (torch.export), aoti (AOTInductor package) and the
legacy torchscript (torch.jit.trace)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from ptflow.artifact import Form
from ptflow.stages.export_formats import (TENSOR_SUBCLASS_RECIPES, ExportJob, export_format, flat_inputs,
                                          write_bytes)
from ptflow.spec import ModelInputs, call

_NEEDS_EXPORT = {
    Form.SCRIPTED: "needs torch.export, which cannot trace a TorchScript module: load the model from a "
                   "state_dict or a .pt2 program, or pick export.formats=[torchscript]",
    Form.PACKED: "needs torch.export, which cannot trace torch.ao's packed quantized layers: pick a "
                 "torchao quantize recipe, or export.formats=[torchscript]",
}


def _load_pt2(path: Path, job: ExportJob):
    module = torch.export.load(path).module()

    def run(inputs: ModelInputs) -> Any:
        return call(module, inputs)

    run.module = module   # the reloaded program goes on as the run's model
    return run


@export_format("pt2", suffix=".pt2", load=_load_pt2, tolerance=1e-4, refuses=_NEEDS_EXPORT,
               summary="torch.export program (ExportedProgram), dynamic dims kept",
               load_hint="import torch; m = torch.export.load({file!r}).module()")
def write_pt2(job: ExportJob, path: Path) -> dict[str, Any]:
    buffer = io.BytesIO()    # in memory: torch's zip writer aborts the process on a full disk
    torch.export.save(job.program(), buffer)
    write_bytes(path, buffer.getbuffer())
    return {}


def _load_aoti(path: Path, job: ExportJob):
    runner = torch._inductor.aoti_load_package(str(path))
    return lambda inputs: runner(*inputs.args, **inputs.kwargs)


@export_format("aoti", suffix=".aoti.pt2", load=_load_aoti, tolerance=1e-3, refuses=_NEEDS_EXPORT,
               summary="AOTInductor: the program compiled ahead of time to a shared library, packaged",
               load_hint="import torch; m = torch._inductor.aoti_load_package({file!r})")
def write_aoti(job: ExportJob, path: Path) -> dict[str, Any]:
    # aoti_compile_and_package writes the package itself (a zip holding the compiled .so)
    torch._inductor.aoti_compile_and_package(job.program(), package_path=str(path))
    return {}


def _load_torchscript(path: Path, job: ExportJob):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    return lambda inputs: call(module, inputs)


_SUBCLASS_TS = ("torch.jit.trace cannot record torchao's quantized tensor subclasses (it fails inside "
                "the tracer): pick quantize=none, a cast (bf16/fp16) or legacy_dynamic for TorchScript")


@export_format("torchscript", suffix=".ts", load=_load_torchscript, tolerance=1e-4,
               summary="LEGACY TorchScript (torch.jit.trace) for consumers that still load it",
               load_hint="import torch; m = torch.jit.load({file!r})",
               refuses={Form.EXPORTED: "a torch.export program is traced by torch.export, not torch.jit; "
                                       "load the model as an nn.Module (state_dict) to get TorchScript, "
                                       "or pick export.formats=[pt2]"},
               refuses_recipes={r: _SUBCLASS_TS for r in TENSOR_SUBCLASS_RECIPES})
def write_torchscript(job: ExportJob, path: Path) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(job.module, torch.jit.ScriptModule):
            scripted = job.module                     # already TorchScript: saved as it is
        elif job.example.kwargs and not job.example.args:
            scripted = torch.jit.trace(job.module, example_kwarg_inputs=dict(job.example.kwargs), strict=False)
        else:
            scripted = torch.jit.trace(job.module, tuple(flat_inputs(job.example)), strict=False)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    deprecations = sorted({str(w.message).splitlines()[0] for w in caught
                           if issubclass(w.category, (DeprecationWarning, FutureWarning))
                           or "deprecated" in str(w.message)})
    if deprecations:
        job.ctx.warn("export.torchscript", f"torch.jit is deprecated ({len(deprecations)} distinct warning(s), "
                     f"e.g. {deprecations[0]!r}); torchscript is kept for legacy consumers — prefer pt2")
    write_bytes(path, buffer.getbuffer())
    return {"traced_with": [list(t.shape) for t in flat_inputs(job.example)]}
