"""Weights files: the format a file's name promises, and a cheap look at whether it keeps it.

The pre-flight runs for every job of a sweep before anything heavy, so `file_problem`
stats the file and reads only its header (safetensors) or zip directory (torch.save),
never the tensor data: a 10 GB checkpoint costs milliseconds.
"""
from __future__ import annotations

import json
import stat
import struct
import zipfile
from pathlib import Path

from ptflow.errors import InputError

SAFETENSORS = (".safetensors",)
TORCH_FORMATS = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_FORMAT = "a safetensors file (8-byte header length, JSON header, tensor data)"
TORCH_FORMAT = ("a torch.save checkpoint (a zip archive holding data.pkl, or a legacy "
                "pickle stream)")
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger headers itself
PICKLE_PROTOCOLS = range(2, 6)  # torch's legacy format opens with PROTO 2; later protocols too
ZIP_MAGIC = b"PK\x03\x04"
UNPICKLER_DETAIL = "WeightsUnpickler error:"
HEAD_BYTES = 64  # enough to recognise an HTML page or a Git LFS pointer


def expected_format(path: Path) -> str:
    return SAFETENSORS_FORMAT if path.suffix in SAFETENSORS else TORCH_FORMAT


def fix_hint(path: Path) -> str:
    """What to do about a weights file that cannot be read."""
    save = ("safetensors.torch.save_file(model.state_dict(), path)" if path.suffix in SAFETENSORS
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
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return (f"{path} is a zip archive but not a torch.save checkpoint (no data.pkl among "
                    f"{len(names)} entries, e.g. {', '.join(names[:3]) or 'none'})")
        return None
    if _is_pickle(head):
        return None  # a legacy torch.save stream; only reading it all can tell more
    return (f"{path} is neither a zip archive (torch.save's format since 1.6) nor a pickle stream "
            f"(the legacy format){_recognised(head)}")


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


def read_failure(path: Path, error: BaseException) -> InputError:
    """The error to raise when reading the weights file at `path` failed with `error`."""
    return InputError(f"model.weights: cannot read {path} as {expected_format(path)}: "
                      f"{one_line(error)}\n  fix: {fix_hint(path)}")
