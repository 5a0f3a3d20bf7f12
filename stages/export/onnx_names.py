"""ONNX names that follow the model: torch.onnx names a graph output after the node that made it
(``linear_2``) and a dynamic dim after torch's symbol (``s81``). A runtime, a serving client and
MLflow's signature then see those. The outputs are renamed after the model's output keys
(``logits``; ``output`` for a single tensor) and the dims after the data spec's labels
(``batch``, ``seq``). Where a name would clash, torch's stays."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ptflow.core.spec import InputSpec


def output_names(paths: Sequence[str]) -> list[str]:
    """flatten_outputs' paths as names: 'output' -> 'output', 'output.logits' -> 'logits',
    'output.0' -> 'output_0', 'output.a.b' -> 'a_b'."""
    names = []
    for path in paths:
        name = "output" if path == "output" else path.removeprefix("output.").replace(".", "_")
        names.append(f"output_{name}" if name[:1].isdigit() else name)
    return names


def rename_outputs(graph: Any, names: Sequence[str]) -> None:
    """The graph's outputs renamed to `names` (in order), everywhere the values are used; left as
    they are when the counts differ or a name is taken."""
    if len(graph.output) != len(names) or len(set(names)) != len(names):
        return
    taken = {v.name for v in graph.input} | {i.name for i in graph.initializer} \
        | {name for node in graph.node for name in node.output}
    mapping = {value.name: new for value, new in zip(graph.output, names) if value.name != new}
    if set(mapping.values()) & taken:
        return
    _rename_values(graph, mapping)


def _rename_values(graph: Any, mapping: dict[str, str]) -> None:
    from onnx import AttributeProto

    for node in graph.node:
        for field in (node.input, node.output):
            renamed = [mapping.get(name, name) for name in field]
            del field[:]
            field.extend(renamed)
        for attribute in node.attribute:   # an If/Loop body may use the value too
            if attribute.type == AttributeProto.GRAPH:
                _rename_values(attribute.g, mapping)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _rename_values(subgraph, mapping)
    for value in (*graph.output, *graph.value_info):
        value.name = mapping.get(value.name, value.name)


def rename_dims(graph: Any, spec: InputSpec) -> None:
    """Each dynamic dim named by the label the data spec gives it at the same place of the same
    input; every use of torch's symbol (inputs, outputs, intermediate values) renamed with it."""
    labels: dict[str, str | None] = {}
    tensors = {tensor.name: tensor for tensor in spec.tensors}
    for value in graph.input:
        tensor = tensors.get(value.name)
        if tensor is None:
            continue
        wanted = tensor.dynamic_dims()
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            label = wanted.get(index)
            if dim.dim_param and label:
                if labels.setdefault(dim.dim_param, label) != label:
                    labels[dim.dim_param] = None   # one symbol, two labels: keep torch's
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if labels.get(dim.dim_param):
                dim.dim_param = labels[dim.dim_param]
