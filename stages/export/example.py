"""The input example saved next to an export, and the input/output description it gives.

``<name>.example.safetensors`` holds a few rows of real eval inputs (``input.<name>``) and
what the exported model returns for them (``output``, or ``output.<key>`` for a structured output): a user checks a reloaded file
in a fresh process against it, and the MLflow model logged from the export uses it as its
input example and signature. safetensors, so it loads without unpickling and its bytes
are the same for the same inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact
from ptflow.core.spec import BATCH_DIM, ModelInputs, call, flatten_outputs

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

EXAMPLE_ROWS = 4   # rows of the eval batch kept along a dynamic batch dim
INPUT_PREFIX = "input."   # outputs are keyed by their flattened path, which starts with "output"


def example_inputs(artifact: Artifact) -> ModelInputs:
    """The first rows of the example batch (a dynamic batch dim cut to EXAMPLE_ROWS)."""
    import torch

    by_name = {t.name: t for t in artifact.inputs.tensors}
    example = artifact.example.inputs
    names = [name for name, _ in example.named([t.name for t in artifact.inputs.tensors[:len(example.args)]])]

    def cut(name: str, tensor: torch.Tensor) -> torch.Tensor:
        spec = by_name.get(name)
        if spec is not None and spec.dynamic_dims().get(0) == BATCH_DIM:
            tensor = tensor[:EXAMPLE_ROWS]
        return tensor.detach().cpu().contiguous()

    values = [cut(name, t) for name, t in zip(names, list(example.args) + list(example.kwargs.values()))]
    return ModelInputs(tuple(values[:len(example.args)]), dict(zip(example.kwargs, values[len(example.args):])))


def write_example(path: Path, artifact: Artifact, module: Any,
                  shapes_seen: list[list[torch.Tensor]]) -> dict[str, Any]:
    """Write the example file; its manifest entry (the inputs and outputs it holds, each with
    shape, dtype and dynamic dims as -1 where they vary)."""
    import torch

    from safetensors.torch import save

    from ptflow.stages.export.registry import write_bytes

    inputs = example_inputs(artifact)
    with torch.inference_mode():
        outputs = [(p, t.detach().cpu().contiguous()) for p, t in flatten_outputs(call(module, inputs))]
    spec_names = [t.name for t in artifact.inputs.tensors]
    named = inputs.named(spec_names[:len(inputs.args)])
    tensors = {INPUT_PREFIX + name: t for name, t in named}
    tensors.update(dict(outputs))
    write_bytes(path, save(tensors))
    dynamic = {t.name: set(t.dynamic_dims()) for t in artifact.inputs.tensors}
    described_inputs = [_describe(name, t, dynamic.get(name, set())) for name, t in named]
    described_outputs = [_describe(p, t, _varying_dims([t] + [seen[i] for seen in shapes_seen if i < len(seen)]))
                         for i, (p, t) in enumerate(outputs)]
    return {"file": path.name, "inputs": described_inputs, "outputs": described_outputs,
            "passed_as": "keyword" if inputs.kwargs else "positional"}


def _describe(name: str, tensor: torch.Tensor, dynamic: set[int]) -> dict[str, Any]:
    return {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": [-1 if i in dynamic else int(n) for i, n in enumerate(tensor.shape)]}


def _varying_dims(tensors: list[torch.Tensor]) -> set[int]:
    """Dims whose size differs across the outputs seen for differently sized inputs."""
    ranks = {t.dim() for t in tensors}
    if len(ranks) != 1:
        return set()
    return {d for d in range(tensors[0].dim()) if len({t.shape[d] for t in tensors}) > 1}
