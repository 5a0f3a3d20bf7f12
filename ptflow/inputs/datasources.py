"""Data builders to name as `data.source._target_` (or `data.calibration._target_`).

- ``random_inputs``: random tensors shaped like the model's inputs, for latency-only runs
  (no targets, so no task metric: ``data.metric: null``);
- ``tensor_file``: named tensors from a ``.pt`` file (read with ``weights_only=True``) or a
  ``.npz`` file (read without pickles).

A user's own ``torch.utils.data.Dataset`` or ``DataLoader`` needs no builder here: a
`_target_` may return one, and ``ptflow.inputs.data.as_split`` collates it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ptflow.core.errors import InputError, Problem, did_you_mean
from ptflow.core.targets import builder_traits, resolve_path
from ptflow.inputs.data import Split

DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}
SPEC_KEYS = ("shape", "dtype", "low", "high")
TENSOR_FILES = (".pt", ".pth", ".npz")
NO_METRIC = ("random data has no targets, so there is no task metric to compute: set data.metric=null "
             "(latency and output agreement are still measured)")


# --- random inputs --------------------------------------------------------------------------

def _named_specs(inputs: object) -> list[tuple[str, object]] | None:
    """(name, spec) of each input: a mapping names keyword inputs, a list gives positional ones."""
    if isinstance(inputs, Mapping):
        return [(str(name), spec) for name, spec in inputs.items()]
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return [(str(index), spec) for index, spec in enumerate(inputs)]
    return None


def _spec_problems(key: str, spec: object) -> list[Problem]:
    """What is wrong with one input's spec {shape, dtype, low, high}."""
    if not isinstance(spec, Mapping):
        return [Problem(key, spec, "a mapping {shape: [..], dtype: .., low: .., high: ..}")]
    problems = [Problem(f"{key}.{k}", spec[k], "a key of an input spec: " + ", ".join(SPEC_KEYS),
                        did_you_mean(k, SPEC_KEYS) or "remove it") for k in spec if k not in SPEC_KEYS]
    shape = spec.get("shape")
    if not (isinstance(shape, Sequence) and not isinstance(shape, str)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        problems.append(Problem(f"{key}.shape", shape, "the shape of one example (without the batch "
                                "dim) as a list of sizes >= 1, e.g. [64] or [3, 32, 32]; [] for a scalar"))
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES:
        return problems + [Problem(f"{key}.dtype", dtype, "one of " + ", ".join(DTYPES), did_you_mean(dtype, DTYPES))]
    low, high = spec.get("low"), spec.get("high")
    for name, value in (("low", low), ("high", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(Problem(f"{key}.{name}", value, "a number or null"))
    integer = not DTYPES[dtype].is_floating_point and dtype != "bool"
    if integer and high is None:
        problems.append(Problem(f"{key}.high", None, f"the exclusive upper bound of the {dtype} values",
                                "e.g. high: 30522 for token ids of a 30522-word vocabulary"))
    elif not problems and low is not None and high is not None and not low < high:
        problems.append(Problem(f"{key}.low", low, f"a value below high ({high})"))
    return problems


def _random_problems(key: str, arguments: Mapping[str, Any]) -> list[Problem]:
    specs = _named_specs(arguments.get("inputs"))
    if not specs:
        return [Problem(f"{key}.inputs", arguments.get("inputs"),
                        "a mapping of input name -> {shape, dtype} (keyword inputs), or a list of "
                        "{shape, dtype} (positional inputs)", "e.g. inputs: {pixels: {shape: [64]}}")]
    problems = [p for name, spec in specs for p in _spec_problems(f"{key}.inputs.{name}", spec)]
    rows = arguments.get("rows", 64)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        problems.append(Problem(f"{key}.rows", rows, "an integer >= 1 (examples to make)"))
    return problems


def _random_tensor(spec: Mapping[str, Any], rows: int, generator: torch.Generator) -> torch.Tensor:
    dtype = DTYPES[spec.get("dtype", "float32")]
    shape = (rows, *spec["shape"])
    low, high = spec.get("low"), spec.get("high")
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if not dtype.is_floating_point:
        return torch.randint(int(low or 0), int(high), shape, generator=generator, dtype=dtype)
    if low is None and high is None:
        return torch.randn(shape, generator=generator).to(dtype)
    low = 0.0 if low is None else float(low)
    high = 1.0 if high is None else float(high)
    return (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)


@builder_traits(check=_random_problems, synthetic=True, no_targets=lambda arguments: NO_METRIC)
def random_inputs(inputs: Mapping[str, Any] | Sequence[Any], rows: int = 64, seed: int = 0) -> Split:
    """`rows` random examples, no targets. Each input: per-example `shape`, `dtype` (default
    float32); floats are standard normal, or uniform in [low, high) when either is given;
    integers are uniform in [low (default 0), high) — `high` is required (e.g. a vocab size)."""
    problems = _random_problems("random_inputs", {"inputs": inputs, "rows": rows})
    if problems:
        raise InputError("; ".join(p.render() for p in problems))
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: _random_tensor(spec, rows, generator) for name, spec in _named_specs(inputs)}
    return Split(tensors if isinstance(inputs, Mapping) else tuple(tensors.values()), None)


# --- tensors from a file --------------------------------------------------------------------

def _wanted_keys(inputs: object, targets: object) -> list[tuple[str, object]]:
    """(argument, file key) pairs: the keys of the file that `inputs` and `targets` name."""
    if isinstance(inputs, Mapping):
        wanted = [(f"inputs.{name}", key) for name, key in inputs.items()]
    elif isinstance(inputs, Sequence) and not isinstance(inputs, str):
        wanted = [(f"inputs.{index}", key) for index, key in enumerate(inputs)]
    else:
        wanted = [("inputs", inputs)]
    return wanted + ([("targets", targets)] if targets is not None else [])


def _file_keys(path: Path) -> list[str]:
    """The keys of a .npz (from its zip directory) or a .pt file (tensors memory-mapped, not read)."""
    if path.suffix == ".npz":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            return [n.removesuffix(".npy") for n in archive.namelist()]
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\x03\x04"   # only torch.save's zip format can be memory-mapped
    return list(_load_tensors(path, mmap=zipped))


def _tensor_file_problems(key: str, arguments: Mapping[str, Any]) -> list[Problem]:
    text = arguments.get("path")
    if not isinstance(text, str) or not text:
        return [Problem(f"{key}.path", text, "the path of a .pt, .pth or .npz file")]
    try:
        path = resolve_path(text)
    except FileNotFoundError as error:   # pkg:// of a package that is not installed
        return [Problem(f"{key}.path", text, "an existing .pt, .pth or .npz file", str(error))]
    if path.suffix not in TENSOR_FILES:
        return [Problem(f"{key}.path", text, "a file ending in " + ", ".join(TENSOR_FILES),
                        "save tensors with torch.save({'x': x, 'y': y}, path) or numpy.savez(path, x=x, y=y)")]
    if not path.is_file():
        return [Problem(f"{key}.path", text, "an existing .pt, .pth or .npz file", f"no file at {path}")]
    wanted = _wanted_keys(arguments.get("inputs"), arguments.get("targets"))
    bad = [(arg, name) for arg, name in wanted if not isinstance(name, str) or not name]
    if bad:
        return [Problem(f"{key}.{arg}", name, "a key of the file (text)") for arg, name in bad]
    unsafe = _pickled_objects(path)
    if unsafe:
        return [Problem(f"{key}.path", text, "a .pt file holding a dict of tensors, or an .npz file",
                        f"{path} would run code when loaded ({unsafe}): save plain tensors with "
                        "torch.save({'x': x, 'y': y}, path) or numpy.savez(path, x=x, y=y)")]
    try:
        found = _file_keys(path)
    except Exception as error:   # not a zip, not a dict of tensors, pickled objects ...
        return [Problem(f"{key}.path", text, "a .pt file holding a dict of tensors, or an .npz file",
                        f"{path}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")]
    return [Problem(f"{key}.{arg}", name, f"a key of {path}: " + ", ".join(found),
                    did_you_mean(name, found)) for arg, name in wanted if name not in found]


def _pickled_objects(path: Path) -> str | None:
    """What a torch.save file would unpickle beyond tensors (``ptflow.inputs.archive_audit``), or None.
    It is read weights-only anyway; this says so in the pre-flight, naming what it holds."""
    from ptflow.inputs.archive_audit import checkpoint_problem

    if path.suffix == ".npz":
        return None   # numpy.load(allow_pickle=False)
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return None
        handle.seek(0)
        return checkpoint_problem(handle)


def _load_tensors(path: Path, mmap: bool = False) -> dict[str, Any]:
    if path.suffix == ".npz":
        import numpy

        with numpy.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(archive[name]) for name in archive.files}
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(loaded, Mapping):
        raise InputError(f"{path} holds a {type(loaded).__name__}; expected a dict of named tensors, "
                         "e.g. torch.save({'x': x, 'y': y}, path)")
    return dict(loaded)


@builder_traits(check=_tensor_file_problems,
                no_targets=lambda arguments: None if arguments.get("targets") is not None else
                "data.source.targets is null (the file's tensors are all inputs)")
def tensor_file(path: str, inputs: str | Sequence[str] | Mapping[str, str], targets: str | None = None,
                float_dtype: str | None = "float32") -> Split:
    """Tensors from a .pt file (a dict of tensors, read with weights_only=True) or an .npz file.

    `inputs` names the file key of the model's input: one key, a list of keys (positional
    inputs, in order) or a mapping {forward() argument: file key} (keyword inputs). `targets`
    names the key of the targets, or null. Floating tensors are cast to `float_dtype`
    (numpy saves float64; null keeps each file's dtype)."""
    file = resolve_path(path)
    floats = [name for name, dtype in DTYPES.items() if dtype.is_floating_point]
    if float_dtype is not None and float_dtype not in floats:
        raise InputError(f"tensor_file: float_dtype={float_dtype!r}; expected one of {', '.join(floats)} or null")
    try:
        tensors = _load_tensors(file)
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"tensor_file: cannot read {file}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]}\n  fix: save a dict of tensors with "
                         "torch.save({'x': x, 'y': y}, path) or numpy.savez(path, x=x, y=y)") from error

    def take(argument: str, name: object) -> torch.Tensor:
        if name not in tensors:
            hint = did_you_mean(name, tensors)
            raise InputError(f"tensor_file {argument}: {name!r} is not a key of {file}; its keys: "
                             + ", ".join(tensors) + (f" — {hint}" if hint else ""))
        value = tensors[name]
        if not isinstance(value, torch.Tensor):
            raise InputError(f"tensor_file {argument}: {file}[{name!r}] is a {type(value).__name__}, not a tensor")
        if float_dtype is not None and value.is_floating_point():
            value = value.to(DTYPES[float_dtype])
        return value

    if isinstance(inputs, Mapping):
        model_inputs: Any = {argument: take(f"inputs.{argument}", name) for argument, name in inputs.items()}
    elif isinstance(inputs, Sequence) and not isinstance(inputs, str):
        model_inputs = tuple(take(f"inputs.{index}", name) for index, name in enumerate(inputs))
    else:
        model_inputs = take("inputs", inputs)
    return Split(model_inputs, None if targets is None else take("targets", targets))
