"""Bad files for the fault tests: each builder writes one into a test's directory."""
from __future__ import annotations

import io
import random
import socket
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ptflow.core.targets import resolve_path

BUNDLED = resolve_path("pkg://ptflow.zoo/digits_mlp.safetensors")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _noise(size: int) -> bytes:
    return b"\x01" + random.Random(0).randbytes(size - 1)   # neither zip, pickle nor safetensors


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def empty(tmp: Path, name: str) -> None:
    _write(tmp / name, b"")


def noise(tmp: Path, name: str) -> None:
    _write(tmp / name, _noise(4096))


def truncated_safetensors(tmp: Path) -> None:
    _write(tmp / "cut.safetensors", BUNDLED.read_bytes()[:-1000])


def truncated_zip(tmp: Path) -> None:
    data = _torch_bytes(load_file(BUNDLED))
    _write(tmp / "cut.pt", data[: len(data) // 2])


def html_page(tmp: Path) -> None:
    _write(tmp / "page.safetensors", b"<!DOCTYPE html><html><body>Sign in to download</body></html>\n")


def directory(tmp: Path) -> None:
    (tmp / "weights.pt").mkdir()


def a_list(tmp: Path) -> None:
    _write(tmp / "list.pt", _torch_bytes([torch.zeros(1)]))


def pickled_model(tmp: Path) -> None:
    from ptflow.zoo.digits import DigitsMLP

    _write(tmp / "full.pt", _torch_bytes(DigitsMLP(hidden=32)))


def renamed_keys(tmp: Path) -> None:
    state = {k.replace("net.", "layers."): v for k, v in load_file(BUNDLED).items()}
    _write(tmp / "renamed.pt", _torch_bytes(state))


def without_head(tmp: Path) -> None:
    state = {k: v for k, v in load_file(BUNDLED).items() if not k.startswith("net.6.")}
    save_file(state, str(tmp / "headless.safetensors"))


def half(tmp: Path) -> None:
    save_file({k: v.half() for k, v in load_file(BUNDLED).items()}, str(tmp / "half.safetensors"))


def nan_bias(tmp: Path) -> None:
    state = load_file(BUNDLED)
    state["net.0.bias"] = torch.full_like(state["net.0.bias"], float("nan"))
    save_file(state, str(tmp / "nan.safetensors"))


def broken_yaml(tmp: Path) -> None:
    _write(tmp / "cd" / "quantize" / "broken.yaml", b"method: none\n  skip: [1,\n")


def modules(tmp: Path) -> None:
    """Python modules on the test's PYTHONPATH: ones that fail to import, in two ways."""
    _write(tmp / "raises_on_import.py", b"raise RuntimeError('plugin bug at import')\n")
    _write(tmp / "bad_syntax.py", b"def build(:\n    pass\n")


def a_file(tmp: Path) -> None:
    _write(tmp / "afile", b"not a directory\n")


def garbage_db(tmp: Path) -> None:
    _write(tmp / "outputs" / "mlflow.db", b"this is not a sqlite database\n" * 200)


def empty_dir(tmp: Path) -> None:
    (tmp / "ro").mkdir()


def existing_store(tmp: Path) -> None:
    from ptflow.runs.tracking import TrackingConfig, prepare

    prepare(TrackingConfig(), tmp / "ro")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def zip_without_data(tmp: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    _write(tmp / "other.pt", buffer.getvalue())


# -- files that would run code when loaded: each payload creates {tmp}/MARKER (tests/crafted_files.py)

GIVEN = "given"   # a test's input files (not exports: the fault table's manifest check skips them)


def _given(tmp: Path, name: str) -> Path:
    (tmp / GIVEN).mkdir(exist_ok=True)
    return tmp / GIVEN / name

def evil_pt2_sample_inputs(tmp: Path) -> None:
    from tests.crafted_files import pt2_pickled_sample_inputs

    pt2_pickled_sample_inputs(_given(tmp, "evil.pt2"), tmp / "MARKER")


def evil_pt2_weight(tmp: Path) -> None:
    from tests.crafted_files import pt2_pickled_weight

    pt2_pickled_weight(_given(tmp, "evil.pt2"), tmp / "MARKER")


def evil_pt2_expression(tmp: Path) -> None:
    from tests.crafted_files import pt2_sympy_expression

    pt2_sympy_expression(_given(tmp, "evil.pt2"), tmp / "MARKER")


def evil_pt2_library(tmp: Path) -> None:
    from tests.crafted_files import pt2_with_aoti_library

    pt2_with_aoti_library(_given(tmp, "evil.pt2"))


def evil_state_dict(tmp: Path) -> None:
    from tests.crafted_files import state_dict_with_payload

    state_dict_with_payload(tmp / "evil.pt", tmp / "MARKER")
