"""Ahead-of-time runtimes: the model leaves Python for a compiled artifact that ptflow then
loads and runs, so benchmark times what a deployment would run.

- ``aoti``: torch.export + AOTInductor, compiled into a package (``<run dir>/compile/
  model.aoti.pt2``) and loaded with ``aoti_load_package``.
- ``onnxruntime``: the ONNX dynamo exporter, then an onnxruntime ``InferenceSession``
  (graph optimization level and intra-op threads from ``compile.ort``; threads default to
  device.threads), timed against the same torch baseline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Form
from ptflow.core.spec import export_example
from ptflow.stages.compile.registry import CompileJob, OrtOptimization, compile_backend

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    from torch.utils import _pytree
    import torch

EXPORTABLE = frozenset({Form.EAGER, Form.QUANTIZED, Form.EXPORTED})
REFUSALS = {Form.PACKED: "torch.ao's packed quantized layers (legacy_dynamic) cannot go through torch.export: "
                         "pick a torchao quantize recipe, or compile=eager/inductor",
            Form.SCRIPTED: "a TorchScript module cannot go through torch.export: load the model from a "
                           "state_dict or a .pt2 program"}


def _program(job: CompileJob) -> tuple[Any, Any, Any]:
    """(exported program, traced example, dynamic shapes) of the model being compiled."""
    import torch

    traced, shapes = export_example(job.artifact.inputs, job.artifact.example.inputs)
    program = torch.export.export(job.model, traced.args, dict(traced.kwargs), dynamic_shapes=shapes)
    return program, traced, shapes


@compile_backend("aoti", summary="torch.export + AOTInductor package, loaded and run", form=Form.AOTI,
                 accepts=EXPORTABLE, refusals=REFUSALS, inductor=True, uses_export=True)
def aoti(job: CompileJob) -> Any:
    import torch
    import torch._inductor.config as inductor_config

    from ptflow.stages.export.registry import write_bytes
    from ptflow.stages.export.torch_formats import aoti_package

    inductor_config.freezing = job.config.freezing
    program, _, _ = _program(job)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    path = job.out_dir / "model.aoti.pt2"
    # the same stable bytes as export.formats=[aoti] (see aoti_package)
    write_bytes(path, aoti_package(program, {"freezing": job.config.freezing}))
    return torch._inductor.aoti_load_package(str(path))


_ORT_LEVELS = {OrtOptimization.DISABLED: "ORT_DISABLE_ALL", OrtOptimization.BASIC: "ORT_ENABLE_BASIC",
               OrtOptimization.EXTENDED: "ORT_ENABLE_EXTENDED", OrtOptimization.ALL: "ORT_ENABLE_ALL"}


_ORT_RECIPES = {
    **{recipe: "torch.onnx cannot convert torchao's quantized tensor subclasses: pick quantize=int8_static "
               "(PT2E) or none for onnxruntime, or compile=inductor/aoti"
       for recipe in ("int8_dynamic", "int8_weight_only", "int4_weight_only", "float8_dynamic")},
    "bf16": "onnxruntime's CPU provider has no bfloat16 Gemm: pick quantize=fp16 or none for onnxruntime, "
            "or compile=inductor",
    # the exported graph of torch.autocast(bfloat16) casts each Linear's inputs to bfloat16: the same Gemm
    "autocast_bf16": "onnxruntime's CPU provider has no bfloat16 Gemm, and the exported autocast graph runs each "
                     "Linear in bfloat16 (the session fails to build: 'Could not find an implementation for "
                     "Gemm(13)'): pick quantize=autocast_fp16, fp16 or none for onnxruntime, or compile=inductor",
}


@compile_backend("onnxruntime", summary="ONNX (dynamo exporter) run in an onnxruntime InferenceSession",
                 form=Form.ORT, accepts=EXPORTABLE, refusals=REFUSALS, refuses_recipes=_ORT_RECIPES,
                 uses_export=True)
def onnxruntime(job: CompileJob) -> Any:
    import torch

    import onnxruntime as ort

    traced, shapes = export_example(job.artifact.inputs, job.artifact.example.inputs)
    onnx_program = torch.onnx.export(job.model, traced.args, kwargs=dict(traced.kwargs), dynamo=True,
                                     dynamic_shapes=shapes, verbose=False)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    path = job.out_dir / "model.onnx"
    onnx_program.save(str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[job.config.ort.optimization])
    threads = job.config.ort.threads or job.ctx.settings.get("threads")
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if job.artifact.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    from ptflow.stages.compile.runners import OrtRunner

    return OrtRunner(session, onnx_program.exported_program.call_spec.out_spec, job.artifact.device)
