"""Hugging Face transformers models from a local directory (the `hf` extra).

Name it as the model builder; it loads the weights itself, so model.weights stays null:

    builder:
      _target_: ptflow.inputs.hf.from_pretrained
      path: models/my-bert                          # a save_pretrained() directory
      auto_class: AutoModelForSequenceClassification
    weights: null

Loading never touches the network (``local_files_only=True`` and ``HF_HUB_OFFLINE=1``
while it runs) and never runs code shipped with the model (no ``trust_remote_code``;
pickled ``pytorch_model*.bin`` weights must be weights-only safe).
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptflow.core.errors import InputError, Problem, did_you_mean
from ptflow.core.targets import builder_traits, resolve_path
from ptflow.inputs.quiet import quiet_torchao

INSTALL = "pip install 'ptflow[hf]'"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.index.json")
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _problems(key: str, arguments: Mapping[str, Any]) -> list[Problem]:
    """Pre-flight: transformers is installed, `path` is a saved model directory, `auto_class`
    is one of transformers' classes."""
    if importlib.util.find_spec("transformers") is None:
        return [Problem(f"{key}._target_", "ptflow.inputs.hf.from_pretrained", "the transformers package (ptflow's hf extra)",
                        f"it is not installed: {INSTALL}")]
    problems = []
    text = arguments.get("path")
    try:
        directory = resolve_path(str(text)) if text else None
    except FileNotFoundError as error:   # pkg:// of a package that is not installed
        return [Problem(f"{key}.path", text, "a directory written by save_pretrained()", str(error))]
    if directory is None or not directory.is_dir():
        problems.append(Problem(f"{key}.path", text, "a directory written by save_pretrained()",
                                f"no directory at {directory}" if directory else "set it to the model's directory"))
    elif not (directory / "config.json").is_file():
        problems.append(Problem(f"{key}.path", text, "a directory written by save_pretrained() (config.json "
                                "and the weights)", f"no config.json in {directory}: save the model with "
                                "model.save_pretrained(path), or point model.builder.path at that directory"))
    elif not any(next(directory.glob(pattern), None) for pattern in WEIGHT_FILES):
        problems.append(Problem(f"{key}.path", text, "a directory holding the model's weights",
                                f"{directory} has config.json but no model.safetensors or pytorch_model.bin"))
    else:
        unsafe = pickled_weights_problem(directory)
        if unsafe:
            problems.append(Problem(f"{key}.path", text, "a model directory whose weights load without running code",
                                    unsafe))
    name = str(arguments.get("auto_class", "AutoModel"))
    if _transformers_class(name) is None:
        problems.append(Problem(f"{key}.auto_class", name, "a transformers model class with from_pretrained, "
                                "e.g. AutoModelForSequenceClassification", did_you_mean(name, _auto_classes())))
    return problems


def pickled_weights_problem(directory: Path) -> str | None:
    """Why the weights transformers would load from `directory` run code when unpickled, or
    None. With a safetensors file there, transformers loads that; else each pytorch_model*.bin
    (a torch.save zip) must be weights-only safe (``ptflow.inputs.archive_audit``)."""
    from ptflow.inputs.archive_audit import checkpoint_problem

    if next(directory.glob("*.safetensors"), None) is not None:
        return None
    for path in sorted(directory.glob("pytorch_model*.bin")):
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                continue   # a legacy stream: transformers reads it with weights_only=True
            handle.seek(0)
            problem = checkpoint_problem(handle)
        if problem:
            return (f"{path} would run code when loaded ({problem}); re-save the model with save_pretrained(), "
                    "which writes safetensors")
    return None


def _transformers_class(name: str) -> Any:
    with quiet_torchao():
        import transformers

        found = getattr(transformers, name, None) if name.isidentifier() else None
    return found if hasattr(found, "from_pretrained") else None


def _auto_classes() -> list[str]:
    import transformers

    return [n for n in dir(transformers) if n.startswith("AutoModel")]


@contextmanager
def _offline() -> Iterator[None]:
    """No network while loading, and no progress bars on the console."""
    from transformers.utils import logging as hf_logging

    saved = {name: os.environ.get(name) for name in OFFLINE}
    bars = hf_logging.is_progress_bar_enabled()
    os.environ.update({name: "1" for name in OFFLINE})
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if bars:
            hf_logging.enable_progress_bar()


@builder_traits(check=_problems, loads_weights=True)
def from_pretrained(path: str, auto_class: str = "AutoModel", dtype: str | None = None) -> Any:
    """`transformers.<auto_class>.from_pretrained(path)` from a local directory, in eval mode.
    `dtype` (e.g. bfloat16) overrides the dtype saved in config.json."""
    if importlib.util.find_spec("transformers") is None:
        raise InputError(f"model.builder: ptflow.inputs.hf.from_pretrained needs transformers: {INSTALL}")
    directory = resolve_path(path)
    cls = _transformers_class(auto_class)
    if cls is None:
        raise InputError(f"model.builder.auto_class={auto_class!r} is not a transformers model class; "
                         + (did_you_mean(auto_class, _auto_classes()) or "e.g. AutoModelForSequenceClassification"))
    if not (directory / "config.json").is_file():
        raise InputError(f"model.builder.path: no config.json in {directory}; expected a directory written "
                         "by save_pretrained()")
    unsafe = pickled_weights_problem(directory)
    if unsafe:
        raise InputError(f"model.builder.path: {unsafe}")
    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if dtype is not None:   # transformers 5 renamed torch_dtype to dtype
        import transformers

        options["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = dtype
    try:
        with _offline(), quiet_torchao():
            model = cls.from_pretrained(str(directory), **options)
    except Exception as error:
        text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise InputError(f"model.builder: {auto_class}.from_pretrained({Path(directory)}) failed: "
                         f"{type(error).__name__}: {text}\n  fix: check model.builder.path and "
                         "model.builder.auto_class (the task head the directory was saved with)") from error
    return model.eval()
