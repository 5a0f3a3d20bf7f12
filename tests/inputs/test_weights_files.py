"""Damaged weights files name model.weights, the file and the fix; silent degradations warn.

Pre-flight catches what a stat and a header read can (and stays cheap); the rest fails at
run time as an InputError. All in-process, each case well under a second.
"""
from __future__ import annotations

import io
import json
import random
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from ptflow.core import engine
from ptflow.core.errors import InputError
from ptflow.core.stage import Environment, RunContext
from ptflow.inputs import weights
from ptflow.stages.load import DataConfig, LoadConfig, LoadStage, ModelConfig, build_model

BUILDER = {"_target_": "tests.toy_models.KeywordNet", "width": 4}
SOURCE = {"_target_": "tests.toy_models.keyword_split", "rows": 8}


def _state() -> dict[str, torch.Tensor]:
    from tests.toy_models import KeywordNet

    return KeywordNet(width=4).state_dict()


def _config(weights_path: Path | str | None, **model) -> LoadConfig:
    return LoadConfig(model=ModelConfig(builder=BUILDER, weights=None if weights_path is None
                                        else str(weights_path), **model),
                      data=DataConfig(source=SOURCE, batch_size=4))


def _noise(size: int, seed: int = 0) -> bytes:
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] = 0x11  # neither 'P' (zip) nor 0x80 (pickle) nor a plausible header length
    return bytes(data)


def _safetensors_bytes() -> bytes:
    return save(_state())


def _torch_bytes(obj: object = None, **kw) -> bytes:
    buffer = io.BytesIO()
    torch.save(_state() if obj is None else obj, buffer, **kw)
    return buffer.getvalue()


def _header(header: object, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _zip_without_data_pkl() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/notes.txt", "not a checkpoint")
    return buffer.getvalue()


def _damage_records(data: bytes) -> bytes:
    """A torch zip whose records after the first lost their signature; its directory is
    intact, so only reading the records finds the damage."""
    return data[:4] + data[4:].replace(b"PK\x03\x04", b"PK\x00\x00")


# (name, content or None for a directory, what the pre-flight says)
PREFLIGHT_CASES = [
    ("empty.pt", b"", "is empty (0 bytes;"),
    ("empty.safetensors", b"", "is empty (0 bytes;"),
    ("noise.pt", _noise(4096), "neither a zip archive"),
    ("noise.safetensors", _noise(4096), "not a safetensors file"),
    ("cut.safetensors", _safetensors_bytes()[:-40], "is truncated"),
    ("cut_in_header.safetensors", _safetensors_bytes()[:40], "truncated or corrupt"),
    ("cut.pt", _torch_bytes()[:700], "no end-of-central-directory record: truncated"),
    ("no_zip_magic.pt", b"XXXX" + _torch_bytes()[4:], "neither a zip archive"),
    ("garbage_json.safetensors", _header(b"{not json at all}", b"\0" * 16), "corrupt safetensors header"),
    ("not_utf8.safetensors", _header(b"{\xff\xfe}"), "UnicodeDecodeError"),
    ("header_too_long.safetensors", struct.pack("<Q", 10**6) + b'{"a": 1}', "header length says 1000000"),
    ("bad_offsets.safetensors", _header({"w": {"dtype": "F32", "shape": [1], "data_offsets": "x"}}),
     "'w' has no valid data_offsets"),
    ("trailing.safetensors", _safetensors_bytes() + b"\0" * 8, "8 byte(s) after its last tensor"),
    ("x.pt", None, "is a directory"),
    ("page.safetensors", b"<!DOCTYPE html><html>Sign in to download</html>", "HTML/XML page"),
    ("lfs.safetensors", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "Git LFS"),
    ("renamed.pt", _safetensors_bytes(), "looks like a safetensors file: name it .safetensors"),
    ("renamed.safetensors", _torch_bytes(), "looks like a torch.save checkpoint: name it .pt"),
    ("other.pt", _zip_without_data_pkl(), "not a torch.save checkpoint (no data.pkl"),
]


def _make(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"")
    else:
        path.write_bytes(content)
    return path


def _weights_problems(path: Path | str) -> list:
    return [p for p in LoadStage(_config(path)).preflight(Environment("cpu")) if p.key == "model.weights"]


@pytest.mark.parametrize(("name", "content", "says"), PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight_names_the_file_and_what_is_wrong(tmp_path, name, content, says):
    path = _make(tmp_path, name, content)
    (problem,) = _weights_problems(path)
    assert problem.found == str(path)
    assert problem.expected == weights.expected_format(path)
    assert says in problem.hint and str(path) in problem.hint
    assert "point model.weights at the right file" in problem.hint


@pytest.mark.parametrize(("name", "content", "says"), PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_the_same_files_fail_at_run_time_with_an_input_error(tmp_path, name, content, says):
    """Preflight can be skipped (a file replaced meanwhile): reading still names model.weights."""
    path = _make(tmp_path, name, content)
    with pytest.raises(InputError) as caught:
        build_model(_config(path).model)
    assert str(caught.value).startswith("model.weights: ") and str(path) in str(caught.value)


def test_the_found_value_is_the_text_the_user_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    (problem,) = _weights_problems("w.pt")
    assert problem.found == "w.pt" and str(tmp_path / "w.pt") in problem.hint
    assert "torch.save(model.state_dict(), path)" in problem.hint


def test_an_unreadable_file_is_caught_in_preflight(tmp_path, monkeypatch):
    path = tmp_path / "locked.safetensors"
    path.write_bytes(_safetensors_bytes())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights, "open", refuse, raising=False)  # as root, chmod 000 still reads
    (problem,) = _weights_problems(path)
    assert "cannot be read: PermissionError" in problem.hint and str(path) in problem.hint


@pytest.mark.parametrize(("name", "content"), [
    ("w.safetensors", _safetensors_bytes()),
    ("w.pt", _torch_bytes()),
    ("legacy.pt", _torch_bytes(_use_new_zipfile_serialization=False)),
], ids=["safetensors", "torch-zip", "torch-legacy"])
def test_good_files_pass_preflight_and_load(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert _weights_problems(path) == []
    build_model(_config(path).model)


def test_preflight_reads_the_header_not_the_data(tmp_path):
    """A 10 GB (sparse) safetensors file: pre-flight must not read its tensor data."""
    size = 10 * 2**30
    path = tmp_path / "huge.safetensors"
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + size)
    start = time.perf_counter()
    assert _weights_problems(path) == []
    assert time.perf_counter() - start < 0.5


# Files that look right from their header or directory: only reading them finds the fault.
RUNTIME_CASES = [
    ("list.pt", lambda: _torch_bytes([torch.zeros(1)]), "holds a list, not a state_dict"),
    ("damaged_record.pt", lambda: _damage_records(_torch_bytes()), "RuntimeError: PytorchStreamReader"),
    ("pickle_junk.pt", lambda: b"\x80\x02" + bytes(64), "Unsupported operand"),
    ("legacy_cut.pt", lambda: _torch_bytes(_use_new_zipfile_serialization=False)[:60], "EOFError"),
    ("bad_dtype.safetensors", lambda: _header({"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}},
                                              bytes(4)), "SafetensorError"),
]


@pytest.mark.parametrize(("name", "content", "says"), RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_faults_only_reading_finds_are_input_errors(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content())
    assert _weights_problems(path) == []
    with pytest.raises(InputError) as caught:
        build_model(_config(path).model)
    message = str(caught.value)
    assert message.startswith((f"model.weights: {path}", f"model.weights: cannot read {path}"))
    assert says in message and "fix: " in message
    assert len(message.splitlines()) == 2  # the cause on one line, then the fix


def test_a_read_failure_says_the_format_the_cause_and_the_fix(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(InputError) as caught:
        build_model(_config(path).model)
    assert str(caught.value) == (
        f"model.weights: cannot read {path} as {weights.TORCH_FORMAT}: EOFError: the file ends early\n"
        f"  fix: re-download {path} or re-save it with torch.save(model.state_dict(), path), "
        "or point model.weights at the right file")


def test_junk_under_trust_pickle_is_a_read_failure_not_a_refusal(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x80\x02\x11" + bytes(16))
    with pytest.raises(InputError, match="cannot read .*UnpicklingError") as caught:
        build_model(ModelConfig(builder=None, weights=str(path), trust_pickle=True))
    assert "model.trust_pickle=true" not in str(caught.value)


def test_a_nested_entry_that_is_no_state_dict_names_the_key(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": [1, 2], "epoch": 3}, path)
    with pytest.raises(InputError, match="model.state_dict_key='state_dict'.*holds a list"):
        build_model(_config(path, state_dict_key="state_dict").model)


# --- silent degradations warn through ctx.warn -----------------------------------------

def _run(tmp_path: Path, config: LoadConfig) -> tuple[torch.nn.Module, list[tuple[str, str]]]:
    heard: list[tuple[str, str]] = []
    ctx = RunContext(tmp_path, "cpu", 0, "0" * 64, {}, engine.progress,
                     warn=lambda key, message: heard.append((key, message)))
    return LoadStage(config).run(None, ctx).module, heard


def test_strict_false_warns_of_missing_and_unexpected_keys(tmp_path):
    state = {k: v for k, v in _state().items() if not k.startswith("head.")}
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    _, heard = _run(tmp_path, _config(path, strict=False))
    ((key, message),) = heard
    assert key == "load.strict" and str(path) in message
    assert "2 model key(s) missing from the file keep the values model.builder initialised" in message
    assert "head.weight, head.bias" in message
    assert "1 unexpected key(s) in the file are ignored: extra.weight" in message


def test_float16_weights_warn_of_the_cast(tmp_path):
    half = {k: v.half() for k, v in _state().items()}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path))
    module, heard = _run(tmp_path, _config(path))
    assert heard == [("load.dtype", "model.weights: 4 tensor(s) cast from float16 (file) to float32 "
                                    "(model): encode.weight, encode.bias, head.weight, head.bias")]
    assert module.encode.weight.dtype == torch.float32
    assert torch.equal(module.encode.weight, half["encode.weight"].float())


def test_integer_buffers_that_match_are_not_listed_as_casts(tmp_path):
    spec = {"_target_": "torch.nn.BatchNorm1d", "num_features": 3}
    state = {k: (v.half() if v.is_floating_point() else v)
             for k, v in torch.nn.BatchNorm1d(3).state_dict().items()}
    path = tmp_path / "bn.safetensors"
    save_file(state, str(path))
    heard: list[tuple[str, str]] = []
    build_model(ModelConfig(builder=spec, weights=str(path)), lambda k, m: heard.append((k, m)))
    ((key, message),) = heard
    assert key == "load.dtype" and "4 tensor(s) cast" in message and "num_batches_tracked" not in message


def test_null_weights_warn_that_the_parameters_are_the_builders(tmp_path):
    _, heard = _run(tmp_path, _config(None))
    assert [key for key, _ in heard] == ["load.weights"]
    assert "model.weights is null" in heard[0][1]


def test_a_clean_load_warns_of_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_state(), str(path))
    assert _run(tmp_path, _config(path))[1] == []
