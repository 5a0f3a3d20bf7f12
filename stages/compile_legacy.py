"""LEGACY TorchScript backends (deprecated in torch): torch.jit.trace and torch.jit.script,
kept as named recipes for consumers that still load TorchScript and for comparison with the
living runtimes. torch warns on every TorchScript call; ptflow reports it once per run
(tag ptflow.warning.compile.legacy)."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from ptflow.artifact import Form
from ptflow.stages.compile import CompileJob, compile_backend

SCRIPTABLE = frozenset({Form.EAGER, Form.PACKED})   # the seed's path: quantize_dynamic + TorchScript
REFUSALS = {Form.QUANTIZED: "torchao's quantized tensor subclasses (and PT2E graphs) cannot be TorchScripted: "
                            "use quantize=legacy_dynamic with TorchScript, or compile=inductor/aoti",
            Form.EXPORTED: "a .pt2 program is already a graph: run it as it is (compile=eager) or with "
                           "compile=aoti",
            Form.SCRIPTED: "the model is TorchScript already: use compile=eager"}


def _quietly(job: CompileJob, build: Callable[[], Any]) -> Any:
    """Build with torch's deprecation warnings captured and reported once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scripted = build()
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
    example = job.artifact.example.inputs

    def build() -> Any:
        with torch.no_grad():
            if example.kwargs:   # keyword inputs: example_inputs must be None, not ()
                traced = torch.jit.trace(job.model, None, example_kwarg_inputs=dict(example.kwargs), strict=False)
            else:
                traced = torch.jit.trace(job.model, example.args, strict=False)
            return torch.jit.freeze(traced.eval())

    return _quietly(job, build)


@compile_backend("torchscript_script", summary="LEGACY torch.jit.script + freeze", form=Form.SCRIPTED,
                 accepts=SCRIPTABLE, refusals=REFUSALS)
def torchscript_script(job: CompileJob) -> Any:
    return _quietly(job, lambda: torch.jit.freeze(torch.jit.script(job.model).eval()))
