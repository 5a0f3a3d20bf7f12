"""The wrapper the float recipes return (``cast``): `module` run in another dtype, a drop-in
replacement. Imported when a float recipe runs, not when the plan is checked; torch is
imported at the top here because ``forward`` is on the timed path."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils import _pytree


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return _pytree.tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point()
                            else t, value)


class LowPrecision(torch.nn.Module):
    """`module` run in `dtype`: its weights cast (autocast=False) or under torch.autocast."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, autocast: bool, device_type: str):
        super().__init__()
        self.module = module if autocast else module.to(dtype)
        self.dtype, self.autocast, self.device_type = dtype, autocast, device_type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.autocast:
            with torch.autocast(self.device_type, dtype=self.dtype):
                output = self.module(*args, **kwargs)
        else:
            output = self.module(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        return _cast(output, torch.float32)


def _with_signature_of(module: torch.nn.Module) -> type:
    """A LowPrecision subclass whose forward() shows `module.forward`'s parameters, so
    torch.export binds inputs (and their dynamic dims) by the model's own argument names."""
    signature = inspect.signature(module.forward)
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def forward(self: LowPrecision, *args: Any, **kwargs: Any) -> Any:
        return LowPrecision.forward(self, *args, **kwargs)

    forward.__signature__ = signature.replace(parameters=[this, *signature.parameters.values()])
    return type(LowPrecision.__name__, (LowPrecision,), {"forward": forward, "__module__": __name__})


def _low_precision(job: QuantizeJob, dtype: torch.dtype, autocast: bool) -> Quantized:
    device_type = torch.device(job.artifact.device).type


def wrap(module: torch.nn.Module, dtype: torch.dtype, autocast: bool, device_type: str) -> LowPrecision:
    """`module` in `dtype` (cast, or under torch.autocast), in eval mode."""
    return _with_signature_of(module)(module, dtype, autocast, device_type).eval()
