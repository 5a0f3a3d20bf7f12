"""Reading a state_dict from a weights file and fitting it to a module, with errors that
say which keys, shapes or dtypes disagree and how to fix it."""
from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.errors import InputError
from ptflow.inputs.weights import PICKLED_OBJECTS, SAFETENSORS, fix_hint, read_failure

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

SHOWN_KEYS = 8
# Texts of torch's weights-only unpickler that mean a damaged stream, not a refused object.
CORRUPT_PICKLE = ("Unsupported operand", "String is too long", "persistent_load id",
                  "unsupported persistent id")
Warn = Callable[[str, str], None]


def read_weights(path: Path, trust_pickle: bool) -> Any:
    """What the file holds; every failure to read it is an InputError naming model.weights."""
    import torch

    try:
        if path.suffix in SAFETENSORS:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        if trust_pickle or any(text in str(error) for text in CORRUPT_PICKLE):
            raise read_failure(path, error) from error
        raise InputError(
            f"model.weights: {path} {PICKLED_OBJECTS}, so ptflow refuses by default.\n  fix: save "
            "model.state_dict() instead, or — only if you trust the file — set model.trust_pickle=true.") from error
    except MemoryError:
        raise
    except Exception as error:  # any parser's failure on this file (EOFError, SafetensorError, ...)
        raise read_failure(path, error) from error


def select_state_dict(loaded: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(loaded, dict):
        raise InputError(f"model.weights: {path} holds a {type(loaded).__name__}, not a state_dict "
                         f"(a dict of tensors)\n  fix: {fix_hint(path)}")
    if key is not None:
        if key not in loaded:
            raise InputError(f"model.state_dict_key={key!r} is not in {path}; its keys: {sorted(loaded)[:20]}")
        loaded = loaded[key]
        if not isinstance(loaded, dict):
            what = f"a {type(loaded).__name__}"
        else:
            others = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
            what = f"non-tensors ({_listing(others)})" if others else ""
        if what:
            raise InputError(f"model.state_dict_key={key!r}: that entry of {path} holds {what}, not a "
                             "state_dict (a dict of tensors); name the entry that holds the weights")
    elif loaded and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        nested = [k for k, v in loaded.items() if isinstance(v, dict)]
        raise InputError(f"model.weights: {path} is a checkpoint dict with entries {sorted(loaded)[:20]},"
                         " not a plain state_dict; set model.state_dict_key to the entry that holds the "
                         "weights" + (f" (one of {nested})" if nested else ""))
    return loaded


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f", … (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _renamed_prefix(missing: list[str], unexpected: list[str]) -> tuple[str, str] | None:
    """('layers.', 'net.') when the two key sets differ only in their first component."""
    def split(keys: list[str]) -> tuple[set[str], set[str]]:
        parts = [k.split(".", 1) for k in keys if "." in k]
        return {p[0] for p in parts}, {p[1] for p in parts}

    (file_heads, file_rest), (model_heads, model_rest) = split(unexpected), split(missing)
    if missing and len(file_heads) == len(model_heads) == 1 and file_rest == model_rest:
        return f"{file_heads.pop()}.", f"{model_heads.pop()}."
    return None


def partial_load_message(path: Path, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} model key(s) missing from the file keep the values model.builder "
                     f"initialised them with: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) in the file are ignored: "
                     f"{_listing(unexpected)}")
    return f"model.strict=false loaded {path} partially: " + "; ".join(parts)


def casts(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """'model.weights: N tensor(s) cast from A (file) to B (model): names' for each dtype pair."""
    import torch

    pairs: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for name, target in module.state_dict().items():
        source = state.get(name)
        if isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor) \
                and source.dtype != target.dtype:
            pairs.setdefault((source.dtype, target.dtype), []).append(name)
    return "; ".join(f"model.weights: {len(names)} tensor(s) cast from {_dtype(a)} (file) to "
                     f"{_dtype(b)} (model): {_listing(names)}" for (a, b), names in pairs.items())


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_keys(module: torch.nn.Module, state: dict[str, Any], strict: bool,
               path: Path) -> tuple[list[str], list[str]]:
    """Raise a readable InputError if `state` does not fit `module`; else the keys that
    model.strict=false lets through: (missing from the file, unexpected in it)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not shapes and not (strict and (missing or unexpected)):
        return missing, unexpected
    lines = [f"model.weights: the state_dict in {path} does not match {type(module).__name__}:"]
    if missing:
        lines.append(f"  missing from the file ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the file ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {_listing(shapes)}")
    renamed = _renamed_prefix(missing, unexpected)
    if renamed:
        lines.append(f"  hint: the file names its modules '{renamed[0]}…' where the model has "
                     f"'{renamed[1]}…' — a renamed attribute or a different architecture")
    elif unexpected and all(k.startswith("module.") for k in unexpected):
        lines.append("  hint: every file key starts with 'module.' — it was saved from a "
                     "DataParallel/DDP wrapper; save model.module.state_dict() instead")
    lines.append("  fix: point model.weights at a checkpoint of this architecture or correct "
                 "model.builder's arguments" + ("; model.strict=false loads only the matching keys"
                                                if not shapes else ""))
    raise InputError("\n".join(lines))
