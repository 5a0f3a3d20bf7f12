"""Facts about a module that several stages report (size, parameter count, dtype)."""
from __future__ import annotations

import io
from typing import Any


def serialized_size_mb(module: Any) -> float:
    """Size of the module's state_dict as torch.save writes it — honest for quantized
    tensor subclasses, whose numel * element_size would report the float size."""
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell() / 1e6


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def dtype_of(module: Any) -> str:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
    return "unknown"
