"""torch's own export formats: pt2 (torch.export), aoti (AOTInductor package) and the
legacy torchscript (torch.jit.trace)."""
from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Form
from ptflow.core.errors import InputError
from ptflow.core.spec import ModelInputs, call
from ptflow.stages.export.registry import (TENSOR_SUBCLASS_RECIPES, ExportJob, export_format, flat_inputs,
                                          write_bytes)

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

_NEEDS_EXPORT = {
    Form.SCRIPTED: "needs torch.export, which cannot trace a TorchScript module: load the model from a "
                   "state_dict or a .pt2 program, or pick export.formats=[torchscript]",
    Form.PACKED: "needs torch.export, which cannot trace torch.ao's packed quantized layers: pick a "
                 "torchao quantize recipe, or export.formats=[torchscript]",
}


def _load_pt2(path: Path, job: ExportJob):
    import torch

    module = torch.export.load(path).module()

    def run(inputs: ModelInputs) -> Any:
        return call(module, inputs)

    run.module = module   # the reloaded program goes on as the run's model
    return run


# torch.export.load imports torch._dynamo (~0.9 s, a lazy module of `import torch`) before it reads a file
@export_format("pt2", suffix=".pt2", load=_load_pt2, tolerance=1e-4, refuses=_NEEDS_EXPORT, program=True, uses_export=True,
               call_hint="out = m(*args, **kwargs)", warm=("torch._dynamo",),
               summary="torch.export program (ExportedProgram), dynamic dims kept",
               load_hint="import torch; m = torch.export.load({file!r}).module()")
def write_pt2(job: ExportJob, path: Path) -> dict[str, Any]:
    import torch

    buffer = io.BytesIO()    # in memory: torch's zip writer aborts the process on a full disk
    torch.export.save(job.program(), buffer)
    write_bytes(path, stable_graph_ids(buffer.getvalue()))
    return {}


# A node's provenance ('from_node' in its metadata, which PT2E's passes fill) names each graph it
# came through by the graph's Python id(): a new number in every process. Escaped: the metadata
# value is a JSON string inside models/*.json.
_GRAPH_ID = re.compile(rb'(\\"graph_id\\": )(\d+)')


def stable_graph_ids(archive: bytes) -> bytes:
    """A .pt2 archive whose provenance graph ids are renumbered 0, 1, 2 ... in order of first
    appearance (the same graph keeps the same number), so the file depends only on the program:
    ``ptflow-reproduce`` can compare an int8_static export by sha256. An archive without such ids
    (a plain torch.export program) is returned unchanged."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    with zipfile.ZipFile(io.BytesIO(archive)) as package:
        names = package.namelist()
        if not any(_GRAPH_ID.search(package.read(n)) for n in names if n.endswith(".json")):
            return archive
        out = io.BytesIO()
        with PT2ArchiveWriter(out) as writer:
            for name in names:   # torch's order, kept
                record = name.split("/", 1)[1]
                if record in _WRITER_RECORDS:
                    continue
                data = package.read(name)
                if name.endswith(".json"):
                    numbers: dict[bytes, bytes] = {}
                    data = _GRAPH_ID.sub(lambda m: m.group(1) + numbers.setdefault(
                        m.group(2), str(len(numbers)).encode()), data)
                writer.write_bytes(record, data)
    return out.getvalue()


def _load_aoti(path: Path, job: ExportJob):
    import torch

    runner = torch._inductor.aoti_load_package(str(path))
    return lambda inputs: runner(*inputs.args, **inputs.kwargs)


# What inductor appends to its generated .cpp files each time it builds them (one block per build)
_BUILD_COMMANDS = re.compile(rb"\n// Compile cmd\n// [^\n]*\n// Link cmd\n// [^\n]*\n")
_WRITER_RECORDS = frozenset({".data/version", ".data/serialization_id", "byteorder"})  # the writer adds them


def aoti_package(program: Any, inductor_configs: dict[str, Any] | None = None) -> bytes:
    """`program` compiled by AOTInductor into a package, as bytes that depend only on the program,
    the inductor config, this machine and its inductor cache dir.

    torch's own package is not: (1) its zip's top directory is named after the file written
    (ptflow writes a partial file named with its pid), and (2) inductor appends the build's
    compile and link commands to the generated .cpp in its cache dir on every build, but only
    writes a source that is not there yet, so the n-th build from one cache dir packages n
    copies of them. The package is built in memory (top directory 'archive', as torch.export.save
    names a buffer's) and rewritten with every source ending in one copy of its build commands
    (what a first build ships). The compiled .so and the metadata are copied unchanged.
    """
    import torch
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    built = io.BytesIO()
    torch._inductor.aoti_compile_and_package(program, package_path=built, inductor_configs=inductor_configs)
    out = io.BytesIO()
    with zipfile.ZipFile(built) as package, PT2ArchiveWriter(out) as writer:
        for name in package.namelist():   # torch's order, kept
            record = name.split("/", 1)[1]
            if record in _WRITER_RECORDS:
                continue
            data = package.read(name)
            if record.endswith((".cpp", ".h")):
                data = _one_copy_of_build_commands(data)
            writer.write_bytes(record, data)
    return out.getvalue()


def _one_copy_of_build_commands(source: bytes) -> bytes:
    end = len(source)
    last = None
    while True:   # peel the trailing blocks off, keeping the last one
        found = next((m for m in _BUILD_COMMANDS.finditer(source, 0, end) if m.end() == end), None)
        if found is None:
            break
        last = last or found.group(0)
        end = found.start()
    return source if last is None else source[:end] + last


@export_format("aoti", suffix=".aoti.pt2", load=_load_aoti, tolerance=1e-3, refuses=_NEEDS_EXPORT, program=True, uses_export=True,
               call_hint="out = m(*args, **kwargs)",
               summary="AOTInductor: the program compiled ahead of time to a shared library, packaged",
               load_hint="import torch; m = torch._inductor.aoti_load_package({file!r})")
def write_aoti(job: ExportJob, path: Path) -> dict[str, Any]:
    # built in memory, then written with Python I/O: stable bytes (aoti_package), and a full
    # disk is an OSError naming the file
    write_bytes(path, aoti_package(job.program(), {"freezing": _compile_freezing(job)}))
    return {}


def _compile_freezing(job: ExportJob) -> bool:
    """inductor's `freezing` as this run's compile stage set it (compile.freezing of an inductor
    backend), else torch's default (False): never what an earlier run in this process left in
    inductor's global config, so the package does not depend on what ran before it."""
    from ptflow.stages.compile.registry import backends

    for record in reversed(job.artifact.lineage):
        if record.name == "compile":
            backend = backends().get(record.config.get("backend"))
            return bool(backend is not None and backend.inductor and record.config.get("freezing", True))
    return False


def _load_torchscript(path: Path, job: ExportJob):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    return lambda inputs: call(module, inputs)


_SUBCLASS_TS = ("torch.jit.trace cannot record torchao's quantized tensor subclasses (it fails inside "
                "the tracer): pick quantize=none, a cast (bf16/fp16) or legacy_dynamic for TorchScript")


_TS_FIX = ("Leave torchscript out of export.formats, or rewrite the step with torch.where or torch.cond (then "
           "torch.export, and so pt2 and onnx, can take it too)")


def _trace(module: Any, example: ModelInputs) -> tuple[Any, list[warnings.WarningMessage]]:
    """torch.jit.trace of `module` (a ScriptModule as it is), with the warnings it raised."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(module, torch.jit.ScriptModule):
            scripted = module                     # already TorchScript: saved as it is
        elif example.kwargs and not example.args:
            scripted = torch.jit.trace(module, example_kwarg_inputs=dict(example.kwargs), strict=False)
        else:
            scripted = torch.jit.trace(module, tuple(flat_inputs(example)), strict=False)
    return scripted, caught


def _trace_precheck(module: Any, example: ModelInputs) -> None:
    """Right after validate: a trace of the eager model that depends on its input's values stops
    the run before quantize (the written file would hold another model)."""
    import torch

    from ptflow.stages.compile.legacy import trace_refusal

    with torch.no_grad():
        _, caught = _trace(module, example)
    refused = trace_refusal(caught, "export.formats=torchscript (checked right after validate)", module, _TS_FIX)
    if refused:
        raise InputError(refused)


@export_format("torchscript", suffix=".ts", load=_load_torchscript, tolerance=1e-4,
               call_hint="out = m(*args, **kwargs)", precheck=_trace_precheck,
               summary="LEGACY TorchScript (torch.jit.trace) for consumers that still load it",
               load_hint="import torch; m = torch.jit.load({file!r})",
               refuses={Form.EXPORTED: "a torch.export program is traced by torch.export, not torch.jit; "
                                       "load the model as an nn.Module (state_dict) to get TorchScript, "
                                       "or pick export.formats=[pt2]"},
               refuses_recipes={r: _SUBCLASS_TS for r in TENSOR_SUBCLASS_RECIPES})
def write_torchscript(job: ExportJob, path: Path) -> dict[str, Any]:
    import torch

    scripted, caught = _trace(job.module, job.example)
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as saving:
        warnings.simplefilter("always")
        torch.jit.save(scripted, buffer)
    caught = list(caught) + list(saving)
    from ptflow.stages.compile.legacy import trace_refusal

    refused = trace_refusal(caught, "export.formats=torchscript", job.module, _TS_FIX)
    if refused:   # the file would hold another model: no tolerance makes it right
        raise InputError(refused)
    deprecations = sorted({str(w.message).splitlines()[0] for w in caught
                           if issubclass(w.category, (DeprecationWarning, FutureWarning))
                           or "deprecated" in str(w.message)})
    if deprecations:
        job.ctx.warn("export.torchscript", f"torch.jit is deprecated ({len(deprecations)} distinct warning(s), "
                     f"e.g. {deprecations[0]!r}); torchscript is kept for legacy consumers — prefer pt2")
    write_bytes(path, buffer.getbuffer())
    from ptflow.stages.export.requires import op_modules, script_ops

    # a traced PT2E graph calls quantized_decomposed ops: torch.jit.load needs them registered too
    return {"traced_with": [list(t.shape) for t in flat_inputs(job.example)],
            "requires": op_modules(script_ops(scripted))}
