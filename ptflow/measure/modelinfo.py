"""Facts about a module that several stages report (size, parameter count, dtype)."""
from __future__ import annotations

from typing import Any


def model_size_mb(module: Any) -> float:
    """MB of the tensors the model computes with, counted the same way for every recipe:
    elements x element size of each tensor in the state_dict, looking inside quantized
    tensor subclasses (torchao) and packed params (torch.ao) at the data they really hold.
    Key names and container overhead do not count, so a wrapper (bf16, autocast) does not
    change the size; for a GraphModule (a converted PT2E model) only the tensors its graph
    reads count."""
    return sum(tensor_bytes(value) for value in _used_tensors(module).values()) / 1e6


def tensor_bytes(value: Any) -> int:
    """Bytes of the data in `value` (a tensor, a tensor subclass, or a container of them)."""
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if isinstance(value, torch.Tensor):
        if is_traceable_wrapper_subclass(value):
            names, _ = value.__tensor_flatten__()
            return sum(tensor_bytes(getattr(value, name)) for name in names)
        if value.is_quantized:
            extra = 0
            if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                extra = tensor_bytes(value.q_per_channel_scales()) + tensor_bytes(value.q_per_channel_zero_points())
            return value.numel() * value.element_size() + extra
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if hasattr(value, "__getstate__") and type(value).__name__ == "ScriptObject":   # packed params
        return tensor_bytes(value.__getstate__())
    return 0


def _used_tensors(module: Any) -> dict[str, Any]:
    import torch

    if not isinstance(module, torch.fx.GraphModule):
        return module.state_dict()
    used: dict[str, Any] = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            value = module
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                used[str(node.target)] = value
        elif node.op == "call_module":
            used.update({f"{node.target}.{k}": v for k, v in module.get_submodule(node.target).state_dict().items()})
    return used


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def dtype_of(module: Any) -> str:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
    return "unknown"
