"""Quantization recipes built on torchao's ``quantize_`` (tensor-subclass weights)."""
from __future__ import annotations

from typing import Any

from ptflow.core.stage import Environment
from ptflow.inputs.quiet import quiet_torchao
from ptflow.stages.quantize.registry import Quantized, QuantizeJob, quantize_recipe

FLOAT8_CAPABILITY = (8, 9)   # Ada / Hopper and later
# quantize_ swaps in a quantized weight on any module with a `.weight`, but only Linear's and
# Embedding's ops run on it: a Conv2d then fails in forward (aten.convolution unimplemented),
# an LSTM (weight_ih_l0 ...) in quantize_ itself. The CUDA recipes are declared for Linear only.
LINEAR_AND_EMBEDDING = ("Linear", "Embedding")


def import_torchao() -> Any:
    with quiet_torchao():
        import torchao.quantization
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (imports torchao.kernel: "no triton")
    return torchao.quantization


def _granularity(name: str | None, default: str, group_size: int | None = None) -> Any:
    ao = import_torchao()
    chosen = name or default
    if chosen == "per_row":
        return ao.PerRow()
    if chosen == "per_tensor":
        return ao.PerTensor()
    return ao.PerGroup(group_size or 128)


def _apply(job: QuantizeJob, config: Any) -> Quantized:
    ao = import_torchao()
    chosen = job.selection.names(job.module)
    ao.quantize_(job.module, config, filter_fn=job.selection.filter(job.module))
    return Quantized(job.module, job.module, chosen)


@quantize_recipe("int8_dynamic", summary="torchao int8 weights + dynamic per-token int8 activations",
                 granularity=("per_row", "per_tensor"), converts=LINEAR_AND_EMBEDDING)
def int8_dynamic(job: QuantizeJob) -> Quantized:
    ao = import_torchao()
    return _apply(job, ao.Int8DynamicActivationInt8WeightConfig(
        granularity=_granularity(job.config.granularity, "per_row")))


@quantize_recipe("int8_weight_only", summary="torchao int8 weights, float activations",
                 granularity=("per_row", "per_group"), converts=LINEAR_AND_EMBEDDING)
def int8_weight_only(job: QuantizeJob) -> Quantized:
    ao = import_torchao()
    granularity = _granularity(job.config.granularity, "per_row", job.config.group_size)
    return _apply(job, ao.Int8WeightOnlyConfig(granularity=granularity))


def _cuda_capability(minimum: tuple[int, int], what: str):
    def check(env: Environment) -> str | None:
        import torch

        if not torch.cuda.is_available():
            return f"{what} needs a CUDA GPU; torch.cuda.is_available() is false on this machine"
        found = torch.cuda.get_device_capability()
        if found < minimum:
            return (f"{what} needs CUDA compute capability >= {minimum[0]}.{minimum[1]}; "
                    f"{torch.cuda.get_device_name()} has {found[0]}.{found[1]}")
        return None

    return check


@quantize_recipe("int4_weight_only", summary="torchao int4 grouped weights (CUDA)", devices=("cuda",),
                 check=_cuda_capability((8, 0), "int4_weight_only"))
def int4_weight_only(job: QuantizeJob) -> Quantized:
    ao = import_torchao()
    return _apply(job, ao.Int4WeightOnlyConfig(group_size=job.config.group_size or 128))


@quantize_recipe("float8_dynamic", summary="torchao float8 weights + dynamic float8 activations (CUDA)",
                 devices=("cuda",), granularity=("per_tensor", "per_row"),
                 check=_cuda_capability(FLOAT8_CAPABILITY, "float8_dynamic"))
def float8_dynamic(job: QuantizeJob) -> Quantized:
    ao = import_torchao()
    return _apply(job, ao.Float8DynamicActivationFloat8WeightConfig(
        granularity=_granularity(job.config.granularity, "per_tensor")))
