"""The callables compile hands to benchmark when the runnable is not the module itself:
onnxruntime's session called like the torch model, and a runnable fed channels_last inputs.
Imported when such a backend runs, not when the plan is checked; torch is imported at the top
here because ``__call__`` is on the timed path."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree


class OrtRunner:
    """Calls an InferenceSession like the torch model: the same positional/keyword tensors in,
    the same output structure out (tensors on the model's device)."""

    def __init__(self, session: Any, out_spec: Any, device: str):
        self.session, self.out_spec, self.device = session, out_spec, device
        self.names = [i.name for i in session.get_inputs()]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = list(args) + [kwargs[name] for name in self.names[len(args):]]
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.names, flat)}
        outputs = [torch.from_numpy(o).to(self.device) for o in self.session.run(None, feed)]
        return _pytree.tree_unflatten(outputs, self.out_spec)


class ChannelsLastInputs:
    """Calls the runnable with every 4-D input in channels_last memory format."""

    def __init__(self, runnable: Any):
        self.runnable = runnable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        def convert(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                return value.contiguous(memory_format=torch.channels_last)
            return value

        return self.runnable(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
