"""The served model: loaded from verified bytes, described by its manifest, checked against
its example before it may report ready.

``Served.run`` takes one numpy array per input (in the manifest's input order) and returns
one per output; it is what the batcher's worker thread calls. Its description — names,
protocol datatypes, shapes with ``-1`` for every dynamic dim — comes from the manifest's
``example`` entry (the same one the MLflow signature is written from).
"""
from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptflow.serve.source import Export
from ptflow.serve.verify import Refused, read_example, read_verified

# manifest dtype -> Open Inference Protocol datatype (numpy has no bfloat16: such inputs are refused)
DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64", "int32": "INT32",
             "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
INPUT_PREFIX = "input."


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str          # protocol datatype, e.g. FP32
    dtype: str             # numpy dtype name
    shape: tuple[int, ...]  # -1 where the dim is dynamic

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def specs(described: Sequence[dict[str, Any]], what: str) -> list[TensorSpec]:
    out = []
    for item in described:
        dtype = str(item.get("dtype"))
        if dtype not in DATATYPES:
            raise Refused(f"{what} {item.get('name')!r} has dtype {dtype}, which the protocol's numpy path cannot "
                          "carry; export a model whose inputs and outputs are float32/16/64 or integers")
        out.append(TensorSpec(str(item["name"]), DATATYPES[dtype], dtype, tuple(int(n) for n in item["shape"])))
    return out


@dataclass
class Served:
    """A loaded export and its description."""

    fmt: str
    entry: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_dynamic: bool          # every input's dim 0 is the dynamic batch dim
    call: Callable[[list[np.ndarray]], list[np.ndarray]]
    device: str = "cpu"

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.call(arrays)


def load(export: Export, fmt: str, device: str = "cpu", threads: int | None = None) -> Served:
    """Load `fmt` from `export` (bytes checked first); Refused naming what is wrong."""
    entry = export.entry(fmt)
    if entry is None:
        exported = sorted(str(e.get("format")) for e in export.entries())
        raise Refused(f"the run exported no {fmt} file (it exported {', '.join(exported) or 'nothing'}): pick "
                      f"--format from those")
    example = export.manifest.get("example") or {}
    inputs, outputs = specs(example.get("inputs") or [], "input"), specs(example.get("outputs") or [], "output")
    if not inputs:
        raise Refused("the manifest describes no inputs (no example entry): re-export with this ptflow")
    data = read_verified(export, entry)
    for module in entry.get("requires") or []:   # what the manifest's load line imports first
        __import__(str(module))
    positional = example.get("passed_as", "positional") != "keyword"
    call = LOADERS[fmt](data, entry, [s.name for s in inputs], positional, device, threads)
    batch = all(s.shape and s.shape[0] == -1 for s in inputs) and "batch" in (export.manifest.get("dynamic_dims") or [])
    return Served(fmt, entry, inputs, outputs, batch, call, device)


def _torch_call(module: Any, names: list[str], positional: bool, device: str) -> Callable:
    import torch
    from torch.utils._pytree import tree_leaves

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
        with torch.inference_mode():
            out = module(*tensors) if positional else module(**dict(zip(names, tensors)))
        leaves = [leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]
        return [leaf.detach().to("cpu").numpy() for leaf in leaves]
    return call


def _threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _load_pt2(data: bytes, entry: dict, names: list[str], positional: bool, device: str, threads: int | None):
    import torch

    _threads(threads)
    module = torch.export.load(io.BytesIO(data)).module()
    return _torch_call(module.to(device) if device != "cpu" else module, names, positional, device)


def _load_torchscript(data: bytes, entry: dict, names: list[str], positional: bool, device: str, threads: int | None):
    import torch

    _threads(threads)
    return _torch_call(torch.jit.load(io.BytesIO(data), map_location=device), names, positional, device)


def _load_aoti(data: bytes, entry: dict, names: list[str], positional: bool, device: str, threads: int | None):
    import torch

    _threads(threads)
    folder = Path(tempfile.mkdtemp(prefix="ptflow-serve-aoti-"))   # mode 0700: the verified bytes, nobody else's
    path = folder / "model.pt2"
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
    return _torch_call(torch._inductor.aoti_load_package(str(path)), names, positional, device)


def _load_onnx(data: bytes, entry: dict, names: list[str], positional: bool, device: str, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(data, options, providers=providers)
    graph_inputs = [i.name for i in session.get_inputs()]
    if len(graph_inputs) != len(names):
        raise Refused(f"the onnx graph takes {len(graph_inputs)} inputs ({graph_inputs}); the manifest describes "
                      f"{len(names)} ({names})")

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, dict(zip(graph_inputs, arrays))))
    return call


LOADERS: dict[str, Callable[..., Callable[[list[np.ndarray]], list[np.ndarray]]]] = {
    "pt2": _load_pt2, "torchscript": _load_torchscript, "aoti": _load_aoti, "onnx": _load_onnx}


@dataclass
class ExampleCheck:
    max_abs_error: float
    tolerance: float
    rows: int
    call_ms: float          # median of the timed calls on the example (after warm-up)

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance


def check_example(served: Served, export: Export, warmup: int = 5, timed: int = 20) -> ExampleCheck:
    """Run the manifest's example inputs, compare the outputs with the example's within the
    format's tolerance; then warm-up calls and a few timed ones (the start-up line's figure)."""
    from safetensors.torch import load as load_tensors

    tensors = load_tensors(read_example(export))
    arrays = []
    for spec in served.inputs:
        tensor = tensors.get(INPUT_PREFIX + spec.name)
        if tensor is None:
            raise Refused(f"the example file holds no input {spec.name!r}")
        arrays.append(tensor.numpy().astype(spec.dtype, copy=False))
    got = served.run(arrays)
    want = [tensors[s.name].float().numpy() for s in served.outputs if s.name in tensors]
    if len(got) != len(want):
        raise Refused(f"the served {served.fmt} file returns {len(got)} outputs; the example holds {len(want)}")
    worst = 0.0
    for spec, a, b in zip(served.outputs, want, got):
        if tuple(a.shape) != tuple(b.shape):
            raise Refused(f"output {spec.name}: shape {tuple(b.shape)}, the example's is {tuple(a.shape)}")
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    for _ in range(warmup):
        served.run(arrays)
    times = []
    for _ in range(timed):
        started = time.perf_counter()
        served.run(arrays)
        times.append((time.perf_counter() - started) * 1e3)
    rows = int(arrays[0].shape[0]) if arrays[0].ndim else 1
    return ExampleCheck(worst, float(served.entry.get("tolerance", 1e-4)), rows, statistics.median(times))
