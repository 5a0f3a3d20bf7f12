"""Model and data files crafted by an attacker: each runs code (it creates a marker file) in
whatever loads it unsafely, and is otherwise as valid as the real thing. Test-only.

The payload is a pickle REDUCE of `builtins.eval` (or sympy's eval behind sympify) that
creates `marker` and then returns what the loader expects, so a loader that runs it goes
on as if nothing happened: the marker is the only evidence.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch


class _Payload:
    """Pickles as eval(code): creates the marker, then evaluates to `value` (an expression)."""

    def __init__(self, marker: Path, value: str):
        self.code = f"open({str(marker)!r}, 'w').close() or {value}"

    def __reduce__(self):
        return eval, (self.code,)


def torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def payload_bytes(marker: Path, value: str = "None") -> bytes:
    """A torch.save checkpoint whose unpickling creates `marker` and returns eval(value)."""
    return torch_save_bytes(_Payload(marker, value))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x)


def exported(path: Path, dynamic: bool = True) -> Path:
    """A genuine .pt2 of a small Linear model (dynamic batch), to tamper with."""
    torch.manual_seed(0)
    model = Tiny().eval()
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    torch.export.save(torch.export.export(model, (torch.randn(4, 64),), dynamic_shapes=shapes), path)
    return path


def _rewrite(path: Path, change) -> None:
    """Rewrite the zip at `path`, passing each (name, bytes) through change(name, data) -> bytes."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            archive.writestr(info, change(info.filename, data))


def pt2_pickled_sample_inputs(path: Path, marker: Path) -> Path:
    """torch.export.load tries the sample inputs weights-only, then unpickles them fully."""
    exported(path)
    inputs = "((__import__('torch').randn(4, 64),), {})"
    _rewrite(path, lambda name, data: payload_bytes(marker, inputs) if name.endswith("sample_inputs/model.pt")
             else data)
    return path


def pt2_pickled_weight(path: Path, marker: Path) -> Path:
    """A weight marked use_pickle: torch.export.load unpickles it with weights_only=False."""
    exported(path)
    weight = _weight_file(path)

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            config["config"]["fc.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith(f"data/weights/{weight}"):
            return payload_bytes(marker, "__import__('torch').nn.Parameter(__import__('torch').zeros(10, 64))")
        return data

    _rewrite(path, change)
    return path


def _weight_file(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        return json.loads(archive.read(name))["config"]["fc.weight"]["path_name"]


SYMPY_PAYLOAD = "Symbol.__new__.__globals__['__builtins__']['__import__']('os').system('touch {marker}') + s{n}"


def pt2_sympy_expression(path: Path, marker: Path) -> Path:
    """No pickle at all: a shape expression that sympy.sympify (eval) runs when the program loads."""
    exported(path)

    def change(name: str, data: bytes) -> bytes:
        if name.endswith(".json") and "/models/" in f"/{name}":
            text = data.decode()
            start = text.index('"expr_str": "') + len('"expr_str": "')
            end = text.index('"', start)
            symbol = text[start:end]
            payload = SYMPY_PAYLOAD.format(marker=marker, n=symbol.lstrip("s") or "0").replace('"', '\\"')
            return (text[:start] + payload + text[end:]).encode()
        return data

    _rewrite(path, change)
    return path


def pt2_with_aoti_library(path: Path) -> Path:
    """A .pt2 that also carries an AOTInductor library (dlopened by torch.export.load)."""
    exported(path)
    with zipfile.ZipFile(path, "a") as archive:
        top = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{top}/data/aotinductor/model/model.so", b"\x7fELF not really")
    return path


def torchscript_with_payload(path: Path, marker: Path) -> Path:
    """A TorchScript archive whose data.pkl names builtins.eval (TorchScript's own unpickler
    must refuse it)."""
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    evil = io.BytesIO()
    import pickle

    pickle.dump(_Payload(marker, "None"), evil, protocol=2)
    _rewrite(path, lambda name, data: evil.getvalue() if name.endswith("/data.pkl") else data)
    return path


def state_dict_with_payload(path: Path, marker: Path) -> Path:
    """A .pt 'state_dict' whose unpickling runs code and returns real weights."""
    value = "{k: v for k, v in __import__('torch').nn.Linear(64, 10).state_dict().items()}"
    path.write_bytes(payload_bytes(marker, value))
    return path
