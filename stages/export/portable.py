"""Export formats other runtimes read: safetensors (the weights) and ONNX (torch.onnx, dynamo)."""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Form
from ptflow.core.spec import call, flatten_outputs
from ptflow.stages.export import onnx_names
from ptflow.stages.export.registry import (TENSOR_SUBCLASS_RECIPES, ExportJob, export_format, flat_inputs,
                                          write_bytes)

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


def _load_safetensors(path: Path, job: ExportJob):
    from safetensors.torch import load

    state = load(path.read_bytes())
    fresh = copy.deepcopy(job.module)   # the architecture; every tensor in the file replaces its own
    fresh.load_state_dict(state, strict=True, assign=True)
    return lambda inputs: call(fresh, inputs)


_SUBCLASS_ST = ("safetensors holds plain tensors; torchao's quantized weights are tensor subclasses "
                "(data + scales inside one object): export them as pt2, or quantize=none/bf16/fp16/int8_static")


@export_format("safetensors", suffix=".safetensors", load=_load_safetensors, tolerance=0.0,
               packages=("safetensors", "torch"),
               summary="the module's state_dict (weights only: the code builds the architecture)",
               load_hint="from safetensors.torch import load_file; state = load_file({file!r})"
                         "  # then model.load_state_dict(state)",
               refuses={Form.PACKED: "torch.ao's packed layers keep their weights in opaque packed params, "
                                     "not tensors: pick a torchao recipe or quantize=none",
                        Form.SCRIPTED: "a TorchScript module is its own weights file: pick "
                                       "export.formats=[torchscript]"},
               refuses_recipes={r: _SUBCLASS_ST for r in TENSOR_SUBCLASS_RECIPES})
def write_safetensors(job: ExportJob, path: Path) -> dict[str, Any]:
    import torch

    from safetensors.torch import save

    state = job.module.state_dict()
    odd = [k for k, v in state.items() if type(v) not in (torch.Tensor, torch.nn.Parameter)]
    if odd:
        raise TypeError(f"safetensors holds plain tensors; {len(odd)} state_dict entries are not "
                        f"(e.g. {odd[0]!r}: {type(state[odd[0]]).__name__})")
    # sorted keys, contiguous copies (tied weights would be refused as shared memory): stable bytes
    data = save({k: state[k].detach().contiguous().clone() for k in sorted(state)}, metadata={"format": "pt"})
    write_bytes(path, data)
    return {"tensors": len(state)}


def _load_onnx(path: Path, job: ExportJob):
    import torch

    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs):
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, flat_inputs(inputs))}
        return [torch.from_numpy(a) for a in session.run(None, feed)]

    return run


_ONNX_REFUSES = {
    Form.SCRIPTED: "torch.onnx (dynamo) runs torch.export, which cannot trace a TorchScript module",
    Form.PACKED: "torch.onnx (dynamo) runs torch.export, which cannot trace torch.ao's packed layers",
}
_ONNX_RECIPES = {r: "torch.onnx cannot convert torchao's quantized tensor subclasses (conversion step 3/3 "
                    "fails): pick quantize=none or int8_static for ONNX" for r in TENSOR_SUBCLASS_RECIPES}
for _recipe in ("bf16", "autocast_bf16"):   # autocast's exported graph runs each Linear in bfloat16 too
    _ONNX_RECIPES[_recipe] = ("onnxruntime's CPU provider has no bfloat16 Gemm, so the file cannot be run to "
                              "check it: pick quantize=fp16 or none for ONNX")


@export_format("onnx", suffix=".onnx", load=_load_onnx, tolerance=1e-3, uses_export=True, host_inputs=True,
               call_hint="out = s.run(None, {i.name: t.numpy() for i, t in zip(s.get_inputs(), "
                         "[*args, *kwargs.values()])})",
               packages=("torch", "onnx", "onnxscript", "onnxruntime"),
               summary="ONNX via torch.onnx.export(dynamo=True); checked with onnxruntime (CPU)",
               load_hint="import onnxruntime; s = onnxruntime.InferenceSession({file!r})",
               refuses=_ONNX_REFUSES, refuses_recipes=_ONNX_RECIPES)
def write_onnx(job: ExportJob, path: Path) -> dict[str, Any]:
    import torch

    onnx_logger = logging.getLogger("torch.onnx")   # "torchvision is not installed. Skipping ..." x4
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(job.program(), (), dynamo=True, opset_version=job.opset,
                                             verbose=False, optimize=True)
        finally:
            onnx_logger.setLevel(level)
    proto = onnx_program.model_proto
    with torch.no_grad():   # the model's own output keys, in the order torch.export flattens them
        paths = [path for path, _ in flatten_outputs(call(job.module, job.example))]
    onnx_names.rename_outputs(proto.graph, onnx_names.output_names(paths))
    onnx_names.rename_dims(proto.graph, job.spec)
    proto.producer_version = torch.__version__.split("+")[0]
    data = proto.SerializeToString(deterministic=True)
    write_bytes(path, data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "onnx_inputs": [i.name for i in proto.graph.input],
            "onnx_outputs": [o.name for o in proto.graph.output]}

