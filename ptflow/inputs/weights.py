"""Model files: the format a file's name promises, and a cheap look at whether it keeps it.

The pre-flight runs for every job of a sweep before anything heavy, so `file_problem`
stats the file and reads only its header (safetensors) or zip directory (torch.save,
torch.jit.save, torch.export.save), never the tensor data: a 10 GB checkpoint costs
milliseconds. `sniff` tells the three zip formats apart the same way, so the plan knows
what a file holds (a state_dict, a TorchScript archive, a .pt2 program) before it loads.
"""
from __future__ import annotations

import enum
import json
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptflow.core.errors import InputError

SAFETENSORS = (".safetensors",)
TORCH_FORMATS = (".pt", ".pth", ".bin", ".ckpt", ".pt2")
SAFETENSORS_FORMAT = "a safetensors file (8-byte header length, JSON header, tensor data)"
TORCH_FORMAT = ("a torch.save checkpoint (a zip archive holding data.pkl, or a legacy "
                "pickle stream)")
PT2_FORMAT = "a torch.export program (a .pt2 archive written by torch.export.save)"
PT2_MARKER = "archive_format"   # torch.export.save writes it at the archive's root
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger headers itself
PICKLE_PROTOCOLS = range(2, 6)  # torch's legacy format opens with PROTO 2; later protocols too
ZIP_MAGIC = b"PK\x03\x04"
UNPICKLER_DETAIL = "WeightsUnpickler error:"
HEAD_BYTES = 64  # enough to recognise an HTML page or a Git LFS pointer
# packages a .pt2 may name as its output types and have imported (they register pytree nodes on import)
OUTPUT_TYPE_PACKAGES = ("torch", "transformers")


class ModelFormat(str, enum.Enum):
    """What model.weights holds (model.format)."""

    AUTO = "auto"                # read from the file: safetensors/torch.save -> state_dict, jit -> torchscript, .pt2
    STATE_DICT = "state_dict"    # tensors for model.builder's module (safetensors or torch.save)
    TORCHSCRIPT = "torchscript"  # a torch.jit.save archive: architecture and weights, no Python pickles
    PT2 = "pt2"                  # a torch.export.save program: architecture and weights, no Python pickles
    PICKLE = "pickle"            # torch.save(model): a whole pickled module (needs model.trust_pickle=true)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProgramSignature:
    """How a .pt2 program must be called, and the output types it names (read from its JSON)."""

    positional: int
    keywords: tuple[str, ...]
    output_types: tuple[str, ...]   # serialized pytree type names, e.g. transformers.modeling_outputs.X


def expected_format(path: Path) -> str:
    if path.suffix in SAFETENSORS:
        return SAFETENSORS_FORMAT
    return PT2_FORMAT if path.suffix == ".pt2" else TORCH_FORMAT


def fix_hint(path: Path) -> str:
    """What to do about a weights file that cannot be read."""
    save = ("safetensors.torch.save_file(model.state_dict(), path)" if path.suffix in SAFETENSORS
            else "torch.export.save(program, path)" if path.suffix == ".pt2"
            else "torch.save(model.state_dict(), path)")
    return f"re-download {path} or re-save it with {save}, or point model.weights at the right file"


def file_problem(path: Path) -> str | None:
    """Why `path` (an existing path with a known suffix) cannot be a weights file, or None."""
    try:
        info = path.stat()
    except OSError as error:
        return f"{path} cannot be inspected: {one_line(error)}"
    if stat.S_ISDIR(info.st_mode):
        try:
            inside = sorted(p.name for p in path.iterdir() if p.suffix in SAFETENSORS + TORCH_FORMATS)
        except OSError:
            inside = []
        return (f"{path} is a directory, not a file"
                + (f"; weights files in it: {', '.join(inside[:5])}" if inside else ""))
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if info.st_size == 0:
        return f"{path} is empty (0 bytes; an interrupted download or save?)"
    try:
        with open(path, "rb") as handle:
            if path.suffix in SAFETENSORS:
                return _safetensors_problem(path, handle, info.st_size)
            return _torch_problem(path, handle)
    except OSError as error:
        return f"{path} cannot be read: {one_line(error)}"


def _safetensors_problem(path: Path, handle, size: int) -> str | None:
    head = handle.read(HEAD_BYTES)
    if size < 8:
        return f"{path} has {size} byte(s), fewer than the 8-byte header length it must start with"
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{":
        return f"{path} is not a safetensors file: no JSON header after the length{_recognised(head)}"
    if length > size - 8:
        return (f"{path} is truncated or corrupt: its header length says {length} bytes but only "
                f"{size - 8} follow")
    if length > MAX_HEADER_BYTES:
        return f"{path} has a {length}-byte header, more than safetensors accepts ({MAX_HEADER_BYTES})"
    handle.seek(8)
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError both are
        return f"{path} has a corrupt safetensors header: {one_line(error)}"
    if not isinstance(header, dict):
        return f"{path} has a safetensors header that is not a JSON object"
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            return f"{path} has a corrupt safetensors header: tensor {name!r} has no valid data_offsets"
        ends.append(offsets[1])
    data_bytes, needed = size - 8 - length, max(ends, default=0)
    if needed > data_bytes:
        return (f"{path} is truncated: its header places tensor data up to byte {8 + length + needed} "
                f"but the file ends at byte {size}")
    if needed < data_bytes:
        return (f"{path} has {data_bytes - needed} byte(s) after its last tensor, which safetensors "
                "refuses (corrupt, or two files concatenated?)")
    return None


def _torch_problem(path: Path, handle) -> str | None:
    head = handle.read(HEAD_BYTES)
    if head.startswith(ZIP_MAGIC):  # how torch.load tells its two formats apart
        if not zipfile.is_zipfile(handle):
            return (f"{path} starts like a zip archive (torch.save's format) but has no end-of-"
                    "central-directory record: truncated (an interrupted download or save?)")
        try:
            with zipfile.ZipFile(handle) as archive:  # reads the central directory only
                names = archive.namelist()
        except (zipfile.BadZipFile, ValueError, EOFError) as error:
            return f"{path} is a damaged zip archive: {one_line(error)}"
        if _zip_format(names) is None:
            return (f"{path} is a zip archive but not a torch.save checkpoint (no data.pkl among "
                    f"{len(names)} entries, e.g. {', '.join(names[:3]) or 'none'}), nor a "
                    "torch.export program (no archive_format entry)")
        return None
    if _is_pickle(head):
        return None  # a legacy torch.save stream; only reading it all can tell more
    return (f"{path} is neither a zip archive (torch.save's format since 1.6) nor a pickle stream "
            f"(the legacy format){_recognised(head)}")


def _zip_format(names: list[str]) -> ModelFormat | None:
    """What a zip archive's entry names say it is: TorchScript archives hold code/ beside
    data.pkl, .pt2 programs an archive_format entry, torch.save checkpoints data.pkl alone."""
    def has(entry: str) -> bool:
        return any(n == entry or n.endswith("/" + entry) for n in names)

    if has(PT2_MARKER):
        return ModelFormat.PT2
    if has("data.pkl"):
        scripted = any(n.startswith("code/") or "/code/" in n for n in names)
        return ModelFormat.TORCHSCRIPT if scripted else ModelFormat.STATE_DICT
    return None


def sniff(path: Path) -> ModelFormat | None:
    """The format of the model file at `path` from its zip directory (never its data);
    STATE_DICT for safetensors and legacy pickle streams (a torch.save checkpoint may still
    hold a whole pickled model: only unpickling can tell). None if it cannot be read."""
    if path.suffix in SAFETENSORS:
        return ModelFormat.STATE_DICT
    try:
        with open(path, "rb") as handle:
            if not handle.read(len(ZIP_MAGIC)).startswith(ZIP_MAGIC):
                return ModelFormat.STATE_DICT
            with zipfile.ZipFile(handle) as archive:
                return _zip_format(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def describe_format(found: ModelFormat) -> str:
    return {ModelFormat.STATE_DICT: "a state_dict (safetensors or torch.save)",
            ModelFormat.TORCHSCRIPT: "a TorchScript archive (torch.jit.save)",
            ModelFormat.PT2: "a torch.export program (torch.export.save)"}.get(found, found.value)


def program_signature(path: Path | Any) -> ProgramSignature:
    """The calling convention and output types of the .pt2 program at `path` (or in a binary
    file object), from the JSON in its archive (loading the program needs its output types
    registered first)."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if f"/{n}".rsplit("/", 2)[-2] == "models"
                    and n.endswith(".json"))
        graph = json.loads(archive.read(name))["graph_module"]
    root = next(entry["signature"] for entry in graph["module_call_graph"] if entry["fqn"] == "")
    args, kwargs = json.loads(root["in_spec"])[1]["children_spec"]
    types: list[str] = []
    _types(json.loads(root["out_spec"])[1], types)
    return ProgramSignature(len(args["children_spec"]), tuple(json.loads(kwargs["context"]) or ()),
                            tuple(types))


def _types(spec: dict, found: list[str]) -> None:
    kind = spec.get("type")
    if kind and not kind.startswith(("builtins.", "collections.")) and kind not in found:
        found.append(kind)
    for child in spec.get("children_spec") or ():
        _types(child, found)


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS


def _recognised(head: bytes) -> str:
    """A note on what the first bytes look like instead, for a file in the wrong format."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "; it is an HTML/XML page (a download that returned an error or login page?)"
    if text.startswith(b"version https://git-lfs"):
        return "; it is a Git LFS pointer: run `git lfs pull` to fetch the real file"
    if head.startswith(ZIP_MAGIC) or _is_pickle(head):
        return "; it looks like a torch.save checkpoint: name it .pt"
    if head[8:9] == b"{":  # only reached for a non-.safetensors name
        return "; it looks like a safetensors file: name it .safetensors"
    return f"; it starts with bytes {head[:8].hex(' ')}"


def one_line(error: BaseException) -> str:
    """`Type: text` on one line, long library messages cut at a sentence end."""
    text = str(error)
    if UNPICKLER_DETAIL in text:  # torch's weights-only preamble says nothing about the file
        text = text.split(UNPICKLER_DETAIL, 1)[1]
    detail = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(detail) > 160:
        cut = detail.rfind(". ", 0, 160)
        detail = detail[:cut + 1] if cut > 0 else detail[:160] + "…"
    if not detail:
        detail = "the file ends early" if isinstance(error, EOFError) else "(no message)"
    return f"{type(error).__name__}: {detail}"


def read_failure(path: Path, error: BaseException, found: ModelFormat | None = None) -> InputError:
    """The error to raise when reading the weights file at `path` (as `found`) failed with `error`."""
    if found is ModelFormat.TORCHSCRIPT:
        what, fix = "a TorchScript archive", "torch.jit.save(torch.jit.script(model), path)"
    elif found is ModelFormat.PT2:
        what, fix = PT2_FORMAT, "torch.export.save(program, path)"
    else:
        return InputError(f"model.weights: cannot read {path} as {expected_format(path)}: "
                          f"{one_line(error)}\n  fix: {fix_hint(path)}")
    return InputError(f"model.weights: cannot read {path} as {what}: {one_line(error)}\n  fix: re-download "
                      f"{path} or re-save it with {fix}, or point model.weights at the right file")


def read_torchscript(path: Path) -> Any:
    """The TorchScript module in a torch.jit.save archive, on the CPU. TorchScript archives
    hold TorchScript code and tensors; loading them runs no Python code from the file."""
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise read_failure(path, error, ModelFormat.TORCHSCRIPT) from error


def read_program(path: Path, trust_pickle: bool = False) -> tuple[Any, ProgramSignature]:
    """The module of the torch.export program in a .pt2 file, and how it must be called.
    The bytes are read once and audited (``ptflow.inputs.archive_audit``: no pickled objects, no
    code in shape expressions, no compiled library) before torch.export.load sees those same
    bytes; `trust_pickle` skips the audit. The program's output types (dataclasses such as
    transformers' ModelOutput) must be registered with torch's pytree before it loads."""
    import io

    import torch

    try:
        data = path.read_bytes()
        signature = program_signature(io.BytesIO(data))
    except Exception as error:   # not the JSON torch.export.save writes
        raise read_failure(path, error, ModelFormat.PT2) from error
    if not trust_pickle:
        from ptflow.inputs.archive_audit import audit_pt2_bytes

        problems = audit_pt2_bytes(data)
        if problems:
            raise InputError(f"model.weights: {unsafe_message(path, problems)}")
    for name in signature.output_types:
        _register_output_type(name, path, trust_pickle)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as error:
        raise read_failure(path, error, ModelFormat.PT2) from error
    return program.module(), signature


PICKLED_OBJECTS = ("holds pickled Python objects, not just tensors (e.g. a whole model saved with "
                   "torch.save(model)); unpickling runs code from the file")


def unsafe_message(path: Path, problems: list[str], what: str = "would run code when loaded") -> str:
    """Why a model file is refused: the entries that would run code, and the opt-in."""
    listed = "".join(f"\n    {p}" for p in problems)
    return (f"{path} {what}, so ptflow refuses it:{listed}\n  fix: use a "
            "file of plain tensors (torch.export.save of a program whose inputs and weights are tensors; "
            "safetensors for a state_dict), or — only if you trust the file and where it came from — set "
            "model.trust_pickle=true")


def safety_problem(path: Path, found: ModelFormat) -> str | None:
    """Pre-flight: why the file at `path` (as `found`) would run code when loaded, or None.
    Reads a .pt2's small entries and a checkpoint's data.pkl, not its tensors."""
    from ptflow.inputs.archive_audit import checkpoint_problem, pt2_problems

    try:
        with open(path, "rb") as handle:
            if not handle.read(len(ZIP_MAGIC)).startswith(ZIP_MAGIC):
                return None   # a legacy pickle stream: only reading it can tell (weights-only at load)
            handle.seek(0)
            if found is ModelFormat.PT2:
                with zipfile.ZipFile(handle) as archive:
                    problems = pt2_problems(archive)
                return unsafe_message(path, problems) if problems else None
            if found is ModelFormat.STATE_DICT:
                problem = checkpoint_problem(handle)
                return None if problem is None else unsafe_message(path, [f"data.pkl: {problem}"], PICKLED_OBJECTS)
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        return f"{path} cannot be inspected: {one_line(error)}"
    return None


def _register_output_type(name: str, path: Path, trust: bool = False) -> None:
    """Make the pytree type `name` (module.Class) known to torch: import its module (which
    registers it, as transformers does) or register the dataclass it names. A file names
    the module, so only modules already imported (your builder's, `plugins`) or of a trusted
    package are imported on its say-so; `trust` (model.trust_pickle) lifts that."""
    import dataclasses
    import importlib
    import sys

    import torch
    from torch.utils import _pytree

    if name in _pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
        return
    parts, found = name.split("."), None
    if not (trust or parts[0] in OUTPUT_TYPE_PACKAGES or parts[0] in sys.modules):
        raise InputError(f"model.weights: the program in {path} returns a {name}; ptflow does not import module "
                         f"'{parts[0]}' because a file names it (importing runs its code)\n  fix: list the module that "
                         f"defines it in plugins (plugins=[{'.'.join(parts[:-1])}]), which ptflow imports before the "
                         "model loads")
    for cut in range(len(parts) - 1, 0, -1):   # the longest importable module prefix
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute, None)
        break
    if name in _pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
        return
    if isinstance(found, type) and dataclasses.is_dataclass(found):
        if found not in _pytree.SUPPORTED_NODES:
            torch.export.register_dataclass(found, serialized_type_name=name)
        return
    raise InputError(f"model.weights: the program in {path} returns a {name}, which ptflow cannot import "
                     "to load it\n  fix: install the package (or put the module in the directory you run "
                     "ptflow from) that defines it")
