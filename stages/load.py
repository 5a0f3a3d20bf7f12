"""load: build the model from a `_target_` builder plus a state_dict file; load eval data."""
from __future__ import annotations

import hashlib
import inspect
import json
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ptflow import fidelity
from ptflow.artifact import Artifact, DataContext, DatasetInfo, Form, TensorInfo
from ptflow.data import as_split, make_batches
from ptflow.errors import ConfigError, InputError, Problem
from ptflow.spec import Batch
from ptflow.modelinfo import dtype_of, parameter_count, serialized_size_mb
from ptflow.stage import Environment, RunContext, ignore_warning, register_stage
from ptflow.targets import check_target, instantiate, resolve_path
from ptflow.weights import (SAFETENSORS, TORCH_FORMATS, expected_format, file_problem, fix_hint,
                            read_failure)

SHOWN_KEYS = 8
# Texts of torch's weights-only unpickler that mean a damaged stream, not a refused object.
CORRUPT_PICKLE = ("Unsupported operand", "String is too long", "persistent_load id",
                  "unsupported persistent id")
Warn = Callable[[str, str], None]


@dataclass(frozen=True)
class ModelConfig:
    builder: dict[str, Any] | None = None  # `_target_` node building the architecture
    weights: str | None = None             # .safetensors or .pt/.pth/.bin/.ckpt; pkg://pkg/file ships in a package
    strict: bool = True                    # every key must match, both ways
    state_dict_key: str | None = None      # entry of a checkpoint dict that holds the state_dict
    trust_pickle: bool = False             # opt in: unpickle a full model (runs code from the file)
    output_key: str | None = None          # the task output among the model's outputs; null = the first

    def __post_init__(self) -> None:
        if self.builder is None and not (self.trust_pickle and self.weights):
            raise ConfigError.single("builder", None, "a `_target_` node that builds the model",
                                     "or load a full pickled model with weights=<file> and trust_pickle=true")


@dataclass(frozen=True)
class DataConfig:
    source: dict[str, Any]                 # `_target_` returning ptflow.data.Split or (inputs, targets)
    calibration: dict[str, Any] | None = None  # `_target_` node for calibration/QAT data, never the eval rows
    batch_size: int = 150
    max_batches: int | None = None
    metric: str | None = "top1_accuracy"   # task metric on the targets; null for unlabelled data
    dynamic_batch: bool = True             # the batch dim is dynamic in the input spec and exports

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError.single("batch_size", self.batch_size, "an integer >= 1")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError.single("max_batches", self.max_batches, "an integer >= 1 or null (all)")
        if self.metric is not None:
            fidelity.metric(self.metric)  # raises ConfigError with the registered names


@dataclass(frozen=True)
class LoadConfig:
    model: ModelConfig
    data: DataConfig


@register_stage("load", config=LoadConfig, keys=("model", "data"))
class LoadStage:
    """Build the model and load its weights (safely); cut the eval data into batches."""

    requires = frozenset()
    provides = frozenset()

    def __init__(self, config: LoadConfig):
        self.config = config

    def consumes(self) -> frozenset[Form]:
        return frozenset()

    def produces(self, given: Form | None) -> Form:
        return Form.EAGER

    def preflight(self, env: Environment) -> list[Problem]:
        model = self.config.model
        problems = check_target(self.config.data.source, "data.source")
        if self.config.data.calibration is not None:
            problems += check_target(self.config.data.calibration, "data.calibration")
        if model.builder is not None:
            problems += check_target(model.builder, "model.builder")
        if model.weights:
            problems += _weights_file_problems(model.weights)
        return problems

    def run(self, artifact: Artifact | None, ctx: RunContext) -> Artifact:
        data = self.config.data
        split = as_split(instantiate(data.source))
        batches = tuple(Batch(b.inputs.map(lambda t: t.to(ctx.device)), b.target)
                        for b in make_batches(split, data.batch_size, data.max_batches))
        module = build_model(self.config.model, ctx.warn).to(ctx.device).eval().requires_grad_(False)
        arg_names = [p for p in inspect.signature(module.forward).parameters if p != "self"]
        spec = batches[0].inputs.spec(arg_names, dynamic_batch=data.dynamic_batch)
        dataset = describe_data(data.source, batches, arg_names, DataContext.EVAL)
        return Artifact(
            model=module, form=Form.EAGER, module=module, inputs=spec, batches=batches,
            device=ctx.device, dtype=dtype_of(module), output_key=self.config.model.output_key,
            task_metric=data.metric,
            settings=dict(ctx.settings),
            calibration=data.calibration,
            datasets=(dataset,),
            metrics={"load.parameters": float(parameter_count(module)),
                     "load.size_mb": serialized_size_mb(module),
                     "load.eval_examples": float(sum(b.inputs.batch_size() for b in batches)),
                     "load.batches": float(len(batches))},
        )


def describe_data(source: Mapping[str, Any], batches: Sequence[Batch], arg_names: Sequence[str],
                  context: DataContext) -> DatasetInfo:
    """Name, source, digest and schema of the rows in `batches` (what the tracker logs as a
    data set). The digest covers the bytes of every input and target, column by column, so
    it does not depend on the batch size."""
    named = [batch.inputs.named(arg_names) for batch in batches]
    inputs = tuple(TensorInfo(name, _dtype(t.dtype), (-1, *t.shape[1:])) for name, t in named[0])
    labels = [torch.as_tensor(b.target) for b in batches] if batches[0].target is not None else []
    targets = TensorInfo("targets", _dtype(labels[0].dtype), (-1, *labels[0].shape[1:])) if labels else None
    digest = hashlib.sha256(json.dumps([asdict(c) for c in (*inputs, targets) if c]).encode())
    for column in range(len(inputs)):
        for leaves in named:
            digest.update(_raw_bytes(leaves[column][1]))
    for label in labels:
        digest.update(_raw_bytes(label))
    target = str(source.get("_target_", "data"))
    arguments = ", ".join(f"{key}={value!r}" for key, value in source.items() if key != "_target_")
    return DatasetInfo(name=target.rsplit(".", 1)[-1], context=context, source=f"{target}({arguments})",
                       digest=digest.hexdigest(), inputs=inputs, targets=targets,
                       rows=sum(b.inputs.batch_size() for b in batches))


def _raw_bytes(tensor: torch.Tensor) -> Any:
    """The tensor's elements as a flat uint8 array (any dtype, bfloat16 included)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _weights_file_problems(text: str) -> list[Problem]:
    """Pre-flight of model.weights: the file exists, has a known suffix and looks like one."""
    try:
        path = resolve_path(text)
    except FileNotFoundError as error:   # pkg:// of a package that is not installed
        return [Problem("model.weights", text, "an existing weights file", str(error))]
    if not path.exists():
        return [Problem("model.weights", text, "an existing weights file", f"no file at {path}")]
    if path.suffix not in SAFETENSORS + TORCH_FORMATS:
        return [Problem("model.weights", text,
                        "a file ending in " + ", ".join(SAFETENSORS + TORCH_FORMATS))]
    defect = file_problem(path)
    if defect is None:
        return []
    return [Problem("model.weights", text, expected_format(path), f"{defect}; fix: {fix_hint(path)}")]


def build_model(config: ModelConfig, warn: Warn = ignore_warning) -> torch.nn.Module:
    """The builder's module with the weights file loaded; `warn(key, message)` hears of casts
    and skipped keys, which load_state_dict does silently."""
    if config.weights is None:
        warn("load.weights", "model.weights is null: using the parameters model.builder creates "
                             "(random unless the builder loads weights itself)")
        return instantiate(config.builder)
    path = resolve_path(config.weights)
    loaded = read_weights(path, config.trust_pickle)
    if isinstance(loaded, torch.nn.Module):
        return loaded
    state = select_state_dict(loaded, config.state_dict_key, path)
    module = instantiate(config.builder)
    missing, unexpected = check_keys(module, state, config.strict, path)
    if missing or unexpected:
        warn("load.strict", _partial_load_message(path, missing, unexpected))
    casts = _casts(module, state)
    if casts:
        warn("load.dtype", casts)
    module.load_state_dict(state, strict=config.strict)
    return module


def read_weights(path: Path, trust_pickle: bool) -> Any:
    """What the file holds; every failure to read it is an InputError naming model.weights."""
    try:
        if path.suffix in SAFETENSORS:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        if trust_pickle or any(text in str(error) for text in CORRUPT_PICKLE):
            raise read_failure(path, error) from error
        raise InputError(
            f"model.weights: {path} holds pickled Python objects, not just tensors (e.g. a whole model "
            "saved with torch.save(model)). Unpickling runs code from the file, so ptflow refuses by "
            "default.\n  fix: save model.state_dict() instead, or — only if you trust the file — set "
            "model.trust_pickle=true.") from error
    except MemoryError:
        raise
    except Exception as error:  # any parser's failure on this file (EOFError, SafetensorError, ...)
        raise read_failure(path, error) from error


def select_state_dict(loaded: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
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


def _partial_load_message(path: Path, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} model key(s) missing from the file keep the values model.builder "
                     f"initialised them with: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) in the file are ignored: "
                     f"{_listing(unexpected)}")
    return f"model.strict=false loaded {path} partially: " + "; ".join(parts)


def _casts(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """'model.weights: N tensor(s) cast from A (file) to B (model): names' for each dtype pair."""
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
