"""benchmark's roofline figures: FLOPs per call (torch's FlopCounterMode), the rate they are
reached at, and its share of the device's peak (a table of known GPUs, or benchmark.peak_tflops).
Plain functions and data; the benchmark stage calls them after timing."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


@dataclass(frozen=True)
class Peak:
    tflops: float     # a device's peak rate at one precision, TFLOP/s (TOPS for int8)
    source: str       # where the figure comes from


@dataclass(frozen=True)
class Figures:
    """Metrics of one pass, and notes saying where a figure means less than its name
    (the stage passes them to ctx.warn)."""

    metrics: dict[str, float]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FlopCount:
    flops: float | None           # FLOPs of one call; None: not countable ...
    reason: str | None = None     # ... and why


# --- peaks ---------------------------------------------------------------------------------
# Dense peak TFLOP/s (TOPS for int8) per compute precision. NVIDIA prints tensor-core rates
# "with sparsity" (2:4 structured); a dense model gets half of that, which is what is listed.
#  - H100 SXM: NVIDIA H100 Tensor Core GPU Architecture whitepaper, peak-rate table at 1.83 GHz
#    (FP32 66.9, TF32 494.7, BF16/FP16 989.4, FP8/INT8 1978.9); H200 SXM: same GPU and clocks,
#    NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 67 / 989* / 1,979* / 3,958*.
#  - H100 PCIe: H100 datasheet (nvidia.com/en-us/data-center/h100): 51 / 756* / 1,513* / 3,026*.
#  - H100 NVL and H200 NVL: the same datasheets: 60 / 835* / 1,671* / 3,341*.
#  - A100 (SXM and PCIe, 40 and 80 GB): NVIDIA A100 datasheet: 19.5 / 156 / 312 / 624.
#  (* = with sparsity, halved here.) CPUs: none listed; their peak depends on the SKU, the
#  vector units and the clock under load: configure benchmark.peak_tflops.
_HOPPER_SXM = {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float8": 1978.9, "int8": 1978.9}
_HOPPER_NVL = {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5, "int8": 1670.5}
_PEAKS: tuple[tuple[re.Pattern[str], str, dict[str, float]], ...] = (
    (re.compile(r"\bH100\b.*\bPCIe\b", re.I), "NVIDIA H100 PCIe datasheet",
     {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.5, "float16": 756.5, "float8": 1513.0, "int8": 1513.0}),
    (re.compile(r"\bH[12]00\b.*\bNVL\b", re.I), "NVIDIA H100/H200 NVL datasheet", _HOPPER_NVL),
    (re.compile(r"\bH100\b", re.I), "NVIDIA H100 SXM whitepaper", _HOPPER_SXM),
    (re.compile(r"\bH200\b", re.I), "NVIDIA H200 SXM datasheet", _HOPPER_SXM),
    (re.compile(r"\bA100\b", re.I), "NVIDIA A100 datasheet",
     {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0, "int8": 624.0}),
)
# torch.set_float32_matmul_precision: 'high' lets float32 matmuls run in TF32, 'medium' in bf16
_FLOAT32_MATMUL = {"highest": "float32", "high": "tf32", "medium": "bfloat16"}
# What the matmuls of each shipped quantize recipe compute in; weight-only int8 dequantizes to
# the activations' dtype, torchao's int4 weight-only runs bf16 activations. Recipes not listed
# (plugins) get no peak rather than a guessed one.
_RECIPE_PRECISION = {"bf16": "bfloat16", "autocast_bf16": "bfloat16", "fp16": "float16", "autocast_fp16": "float16",
                     "int8_dynamic": "int8", "int8_static": "int8", "int8_qat": "int8", "legacy_dynamic": "int8",
                     "float8_dynamic": "float8", "int4_weight_only": "bfloat16"}
_RECIPES_IN_MODEL_DTYPE = (None, "none", "int8_weight_only")


def compute_precision(method: str | None, dtype: str, matmul_precision: str = "highest") -> str | None:
    """The precision whose peak applies to a model loaded in `dtype` ("float32", ...) after
    quantize recipe `method` (None or "none": the baseline), under torch's float32 matmul
    precision ('highest'|'high'|'medium'); None for a recipe this table does not know."""
    if method not in _RECIPES_IN_MODEL_DTYPE:
        return _RECIPE_PRECISION.get(method)
    dtype = dtype.removeprefix("torch.")
    if dtype == "float32":
        return _FLOAT32_MATMUL.get(matmul_precision, "float32")
    return "float8" if dtype.startswith("float8") else dtype


def known_peak(device_name: str, precision: str | None) -> Peak | None:
    """The listed dense peak of a known GPU (by torch.cuda.get_device_name) at `precision`;
    None for CPUs, unlisted GPUs, MIG slices (a fraction of the GPU) and unlisted precisions."""
    found = next((entry for entry in _PEAKS if entry[0].search(device_name)), None)
    if found is None or "MIG" in device_name or precision not in found[2]:
        return None
    return Peak(found[2][precision], f"{found[1]}, {precision} dense")


# --- FLOPs ---------------------------------------------------------------------------------

def flops_per_call(fn: Callable[[], object]) -> FlopCount:
    """FLOPs of one call of `fn`, counted by torch.utils.flop_counter.FlopCounterMode.

    It counts the matmuls, convolutions and attention (not elementwise ops, norms, softmax)
    that pass through PyTorch's dispatcher. Pass the eager module's call: under the counter a
    torch.compile'd callable is traced again (a recompile), and AOTInductor, onnxruntime and
    quantized tensor subclasses (torchao's int8 matmuls) run outside it and read 0 — reported
    as "cannot count", never as 0 FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            fn()
    except Exception as error:   # a callable the counter cannot run (a C++ runtime, a custom kernel)
        return FlopCount(None, f"FlopCounterMode could not run the call: {type(error).__name__}: {error}")
    total = float(counter.get_total_flops())
    if total > 0:
        return FlopCount(total)
    return FlopCount(None, "FlopCounterMode counted 0 FLOPs: the call ran no matmul, convolution or attention "
                           "that it sees (AOTInductor, onnxruntime and quantized tensor subclasses run "
                           "outside it; count on the eager module instead)")


def achieved(flops: float, p50_ms: float, peak_tflops: float | None) -> tuple[float, float | None]:
    """(FLOP/s reached at the median latency, % of the peak or None without a peak)."""
    if not p50_ms > 0:
        raise ValueError(f"p50_ms must be > 0 to compute a rate, got {p50_ms!r}")
    per_s = flops / (p50_ms / 1e3)
    return per_s, (100.0 * per_s / (peak_tflops * 1e12) if peak_tflops else None)


def roofline_metrics(role: str, flops: float, p50_ms: float, peak: Peak | None) -> Figures:
    """benchmark.<role>.achieved_tflops, and with a peak .peak_tflops and .pct_of_peak; a note
    when the rate exceeds the peak (a peak set too low, or FLOPs the model does not run)."""
    per_s, pct = achieved(flops, p50_ms, peak.tflops if peak else None)
    prefix = f"benchmark.{role}"
    if peak is None or pct is None:
        return Figures({f"{prefix}.achieved_tflops": per_s / 1e12})
    metrics = {f"{prefix}.achieved_tflops": per_s / 1e12, f"{prefix}.peak_tflops": peak.tflops,
               f"{prefix}.pct_of_peak": pct}
    if pct <= 100:
        return Figures(metrics)
    return Figures(metrics, (f"{prefix}.pct_of_peak is {pct:.0f}%: the {role} reached {per_s / 1e12:.4g} TFLOP/s, "
                             f"above the peak of {peak.tflops:g} ({peak.source}); set benchmark.peak_tflops to "
                             "the device's real peak",))
