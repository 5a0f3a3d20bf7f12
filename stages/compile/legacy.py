"""LEGACY TorchScript backends (deprecated in torch): torch.jit.trace and torch.jit.script,
kept as named recipes for consumers that still load TorchScript and for comparison with the
living runtimes. torch warns on every TorchScript call; ptflow reports it once per run
(tag ptflow.warning.compile.legacy)."""
from __future__ import annotations

import re
import os
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Form
from ptflow.core.errors import InputError
from ptflow.stages.compile.registry import CompileJob, compile_backend

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

SCRIPTABLE = frozenset({Form.EAGER, Form.PACKED})   # the seed's path: quantize_dynamic + TorchScript
# Probed on the bundled MLP: trace+freeze fails inside the tracer on int8_dynamic and folds int8_weight_only's
# and PT2E's int8 weights back to float32 constants (a silently unquantized model); script takes none of them,
# nor the bf16/fp16/autocast wrappers (forward(*args)). A cast traces fine: export.formats=[torchscript] does it.
REFUSALS = {Form.QUANTIZED: "torchao's quantized tensor subclasses (and PT2E graphs) cannot be TorchScripted: "
                            "torch.jit.trace fails on int8_dynamic's and its freeze folds int8_weight_only's and "
                            "PT2E's int8 weights back to float32; torch.jit.script takes none of them, nor the "
                            "bf16/fp16/autocast wrappers (their forward takes *args). Use quantize=legacy_dynamic "
                            "or none with TorchScript (export.formats=[torchscript] traces a cast model), or "
                            "compile=inductor/aoti",
            Form.EXPORTED: "a .pt2 program is already a graph: run it as it is (compile=eager) or with "
                           "compile=aoti",
            Form.SCRIPTED: "the model is TorchScript already: use compile=eager"}


# torch.jit.trace records the one path a call took; where the code reads a tensor's value (an `if` on
# it, int()/float() of it, iterating over it) another input would take another path. torch warns,
# and the traced model computes something else: never benchmarked, never exported.
DATA_DEPENDENT = "might cause the trace to be incorrect"


def trace_refusal(caught: Sequence[warnings.WarningMessage], what: str, model: Any, fix: str) -> str | None:
    """Why a trace that warned of a data-dependent step is refused (with torch's words, the
    model's source line and `fix`), or None."""
    import torch

    torch_dir = str(Path(torch.__file__).resolve().parent)
    # torch's own checks (torch._assert in a PT2E graph) test values but compute nothing: not a branch
    found = next((w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
                  and DATA_DEPENDENT in str(w.message)
                  and not str(Path(w.filename).resolve()).startswith(torch_dir + os.sep)), None)
    if found is None:
        return None
    said = str(found.message).split(". ")[0].strip().rstrip(".")
    return (f"{what}: torch.jit.trace records one call, and {type(model).__name__} takes a step that depends on "
            f"its input's values, so the traced model would compute something else on other inputs. torch says: "
            f"{said} (at {found.filename}, line {found.lineno}). {fix}")


def _quietly(job: CompileJob, build: Callable[[], Any], traced: bool = False) -> Any:
    """Build with torch's deprecation warnings captured and reported once; a trace that warned of a
    data-dependent step is refused."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scripted = build()
    fix = ("Use compile=torchscript_script (it compiles the branch) or compile=inductor (it runs the branch in "
           "Python between graphs); for torch.export (pt2, aoti, onnx) rewrite it with torch.where or torch.cond")
    refused = trace_refusal(caught, f"compile={job.config.backend}", job.model, fix) if traced else None
    if refused:
        raise InputError(refused)
    deprecations = sorted({str(w.message).splitlines()[0] for w in caught
                           if issubclass(w.category, (DeprecationWarning, FutureWarning))})
    message = f"compile={job.config.backend} uses TorchScript, which torch deprecates"
    if deprecations:
        message += f" (torch says: {deprecations[0][:300]})"
    job.ctx.warn("compile.legacy", message + "; prefer compile=inductor, aoti or onnxruntime")
    return _Silenced(scripted)


class _Silenced:
    """A TorchScript module whose per-call deprecation warnings stay out of the log (said once)."""

    def __init__(self, scripted: Any):
        self.scripted = scripted

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return self.scripted(*args, **kwargs)


@compile_backend("torchscript_trace", summary="LEGACY torch.jit.trace + freeze", form=Form.SCRIPTED,
                 accepts=SCRIPTABLE, refusals=REFUSALS)
def torchscript_trace(job: CompileJob) -> Any:
    import torch

    example = job.artifact.example.inputs

    def build() -> Any:
        with torch.no_grad():
            if example.kwargs:   # keyword inputs: example_inputs must be None, not ()
                traced = torch.jit.trace(job.model, None, example_kwarg_inputs=dict(example.kwargs), strict=False)
            else:
                traced = torch.jit.trace(job.model, example.args, strict=False)
            return torch.jit.freeze(traced.eval())

    return _quietly(job, build, traced=True)


@compile_backend("torchscript_script", summary="LEGACY torch.jit.script + freeze", form=Form.SCRIPTED,
                 accepts=SCRIPTABLE, refusals=REFUSALS)
def torchscript_script(job: CompileJob) -> Any:
    import torch

    return _quietly(job, lambda: torch.jit.freeze(_script(job.model).eval()))


def _script(model: Any) -> Any:
    """torch.jit.script; a model whose code TorchScript cannot compile (a closed-over global, an
    unsupported construct) fails naming the line — TorchScript's own message starts with a blank
    line, which would leave the console's one-line error empty."""
    import torch

    try:
        return torch.jit.script(model)
    except Exception as error:   # TorchScript's frontend: RuntimeError, NotSupportedError, ...
        raise InputError(f"compile=torchscript_script: torch.jit.script cannot compile {type(model).__name__}: "
                         f"{_script_reason(error)}; use compile=torchscript_trace (records one call instead of "
                         "compiling the code), or compile=inductor, aoti or onnxruntime") from error


def _script_reason(error: Exception) -> str:
    """TorchScript's message in one line: what it refused, and where (file, line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    where = next((m for m in map(_SOURCE_LINE.match, lines) if m), None)
    reason = lines[0].rstrip(":")[:300]
    return f"{reason} (at {where.group(1)}, line {where.group(2)})" if where else reason


_SOURCE_LINE = re.compile(r'File "([^"]+)", line (\d+)')
