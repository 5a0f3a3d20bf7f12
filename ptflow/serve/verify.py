"""The bytes ptflow serves are the bytes the manifest hashes, and loading them runs no code
the user did not opt into.

Each file is read once into memory, hashed, and loaded from that same buffer (or, for a
format whose loader takes only a path, from a private copy written from it): a file
swapped after the check is never the one loaded. The formats:

- ``pt2`` (``torch.export``): served after the archive audit (``ptflow.inputs.archive_audit``:
  no pickled code, no symbolic-shape text that ``sympy`` would evaluate, no compiled library);
- ``onnx``: a protobuf graph of operators, run by onnxruntime: data, served;
- ``torchscript``: TorchScript's own unpickler builds only torch types; served as the
  legacy format when named with ``--format torchscript`` (never picked by default);
- ``aoti``: an AOTInductor package is a compiled shared library, native code that runs when
  it loads: served only with ``--trust-native-code`` (the user's opt-in), then checked like
  the others;
- ``safetensors``: weights without a program: not servable (serve pt2 or onnx).
"""
from __future__ import annotations

import hashlib
from typing import Any

from ptflow.serve.source import Export, SourceError

SERVABLE = ("pt2", "aoti", "onnx", "torchscript")
DEFAULT_CANDIDATES = ("pt2", "aoti", "onnx")   # torchscript only when named
NATIVE = frozenset({"aoti"})


class Refused(Exception):
    """Not served: the file differs from its manifest, or would run code unasked."""


def refusal(fmt: str, trust_native_code: bool) -> str | None:
    """Why `fmt` cannot be served with these opt-ins, or None."""
    if fmt == "safetensors":
        return "safetensors holds weights without a program; serve its pt2 or onnx export"
    if fmt not in SERVABLE:
        return f"ptflow-serve serves {', '.join(SERVABLE)}; not {fmt!r}"
    if fmt in NATIVE and not trust_native_code:
        return (f"{fmt} is a compiled shared library: loading it runs its native code. Pass --trust-native-code "
                "if you trust the run that built it, or serve pt2/onnx")
    return None


def read_verified(export: Export, entry: dict[str, Any]) -> bytes:
    """The bytes of `entry`'s file, after their sha256 matched the manifest's."""
    name, want = entry.get("file"), entry.get("sha256")
    if not isinstance(name, str) or not isinstance(want, str) or len(want) != 64:
        raise Refused(f"the manifest's {entry.get('format')} entry records no file and sha256 to check")
    try:
        path = export.path(name, f"files/export.{entry['format']}")
        data = path.read_bytes()
    except (OSError, SourceError) as error:
        raise Refused(f"cannot read {name}: {error}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise Refused(f"{path} has sha256 {got[:16]}…, its manifest records {want[:16]}…: the file was changed "
                      "after the run wrote it. Serve the file the run exported (re-run it: ptflow-reproduce)")
    if entry["format"] == "pt2":
        from ptflow.inputs.archive_audit import audit_pt2_bytes

        problems = audit_pt2_bytes(data)
        if problems:
            raise Refused(f"{path} would run code when loaded: {problems[0]}")
    return data


def read_example(export: Export) -> bytes:
    """The example file's bytes, checked against the manifest's ``example.sha256``."""
    example = export.manifest.get("example") or {}
    name, want = example.get("file"), example.get("sha256")
    if not name or not want:
        raise Refused("the manifest records no example file: ptflow-serve checks the served file against it "
                      "before it reports ready; re-export with a ptflow that writes one")
    try:
        data = export.path(name, "files/export.example").read_bytes()
    except (OSError, SourceError) as error:
        raise Refused(f"cannot read the example {name}: {error}") from None
    if hashlib.sha256(data).hexdigest() != want:
        raise Refused(f"the example {name} differs from its manifest's sha256: it was changed after the run")
    return data
