"""Lower-precision float recipes: weight + activation casts (bf16, fp16) and automatic
mixed precision (torch.autocast around every call; the weights stay float32).

Both wrap the model so it stays a drop-in replacement: floating inputs are cast on the
way in and floating outputs back to float32 on the way out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptflow.core.errors import InputError, first_line
from ptflow.core.spec import call
from ptflow.stages.quantize.coverage import changed_modules, weight_modules
from ptflow.stages.quantize.registry import Quantized, QuantizeJob, quantize_recipe

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch
    from torch.utils import _pytree


def _low_precision(job: QuantizeJob, dtype: torch.dtype, autocast: bool) -> Quantized:
    import torch

    from ptflow.stages.quantize.low_precision import wrap
    device_type = torch.device(job.artifact.device).type
    changed = [] if autocast else [n for n, m in job.module.named_modules()
                                   if any(p.is_floating_point() for p in m.parameters(recurse=False))]
    wrapped = wrap(job.module, dtype, autocast, device_type)
    return Quantized(wrapped, wrapped, changed)


def _cast_weights(job: QuantizeJob, result: Quantized) -> set[str]:
    """The weight modules whose weights the wrapper holds in another dtype."""
    return changed_modules(job.artifact.module, result.module.module)


def _low_precision_ops(job: QuantizeJob, result: Quantized) -> set[str]:
    """The weight modules that computed in the autocast dtype on the example batch (autocast
    keeps float32 weights and picks per op: matmuls, convolutions, RNNs yes; lookups no)."""
    import torch
    from torch.utils import _pytree

    inner, low = result.module.module, result.module.dtype
    seen: set[str] = set()

    def record(name: str, output: Any) -> None:
        if any(isinstance(t, torch.Tensor) and t.dtype == low for t in _pytree.tree_leaves(output)):
            seen.add(name)

    hooks = [inner.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
             for name in weight_modules(job.artifact.module)]
    try:
        with torch.no_grad():
            call(result.model, job.artifact.example.inputs)
    except Exception as error:   # an op with no kernel for this dtype on this device
        raise InputError(f"quantize={job.config.method}: {type(inner).__name__} fails under "
                         f"torch.autocast({result.module.device_type}, {str(low).removeprefix('torch.')}) on the "
                         f"example batch: {type(error).__name__}: {first_line(error).rstrip('.')}. Pick another quantize "
                         "recipe") from error
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@quantize_recipe("bf16", summary="weights and activations cast to bfloat16", whole_model=True, modules=(),
                 converted=_cast_weights)
def bf16(job: QuantizeJob) -> Quantized:
    import torch

    return _low_precision(job, torch.bfloat16, autocast=False)


@quantize_recipe("fp16", summary="weights and activations cast to float16", whole_model=True, modules=(),
                 converted=_cast_weights)
def fp16(job: QuantizeJob) -> Quantized:
    import torch

    return _low_precision(job, torch.float16, autocast=False)


@quantize_recipe("autocast_bf16", summary="torch.autocast(bfloat16) around every call; float32 weights",
                 whole_model=True, modules=(), converted=_low_precision_ops)
def autocast_bf16(job: QuantizeJob) -> Quantized:
    import torch

    return _low_precision(job, torch.bfloat16, autocast=True)


@quantize_recipe("autocast_fp16", summary="torch.autocast(float16) around every call; float32 weights",
                 whole_model=True, modules=(), converted=_low_precision_ops)
def autocast_fp16(job: QuantizeJob) -> Quantized:
    import torch

    return _low_precision(job, torch.float16, autocast=True)
