"""load: build the model — a `_target_` builder plus a state_dict file, a TorchScript
archive or a .pt2 program — safely; load the eval data."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact, DataContext, Form
from ptflow.core.errors import ConfigError, InputError, Problem, invalid_choice
from ptflow.core.spec import Batch
from ptflow.core.stage import Environment, Note, RunContext, ignore_warning, register_stage
from ptflow.core.targets import check_target, instantiate, resolve_path, traits_of
from ptflow.decide import fidelity
from ptflow.inputs.data import as_split, check_keywords, fit_to_program, forward_names, make_batches
from ptflow.inputs.dataset_info import describe_data
from ptflow.inputs.state_dicts import (Warn, casts, partial_load_message, check_keys, read_weights,
                                select_state_dict)
from ptflow.inputs.weights import (SAFETENSORS, TORCH_FORMATS, ModelFormat, ProgramSignature, describe_format,
                            expected_format, file_problem, fix_hint, read_program,
                            read_torchscript, safety_problem, sniff)
from ptflow.measure.modelinfo import dtype_of, parameter_count, model_size_mb

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

# Files that hold their architecture with their weights: no builder, and a form of their own.
FORMS = {ModelFormat.TORCHSCRIPT: Form.SCRIPTED, ModelFormat.PT2: Form.EXPORTED}


@dataclass(frozen=True)
class ModelConfig:
    builder: dict[str, Any] | None = None  # `_target_` node building the architecture
    weights: str | None = None             # .safetensors or .pt/.pth/.bin/.ckpt/.pt2; pkg://pkg/file ships in a package
    format: ModelFormat = ModelFormat.AUTO  # what weights holds: auto (read from the file), state_dict, torchscript, pt2, pickle
    strict: bool = True                    # every key must match, both ways
    state_dict_key: str | None = None      # entry of a checkpoint dict that holds the state_dict
    trust_pickle: bool = False             # opt in: unpickle a full model (runs code from the file)
    output_key: str | None = None          # the task output among the model's outputs; null = the first

    def __post_init__(self) -> None:
        if not isinstance(self.format, ModelFormat):   # built in Python with a plain string
            if self.format not in {f.value for f in ModelFormat}:
                raise invalid_choice("format", self.format, [f.value for f in ModelFormat])
            object.__setattr__(self, "format", ModelFormat(self.format))
        kind = self.format
        if kind in (*FORMS, ModelFormat.PICKLE) and not self.weights:
            raise ConfigError.single("weights", self.weights, f"the file to load with model.format={kind}")
        if kind in FORMS and self.builder is not None:
            raise ConfigError.single("builder", _target_name(self.builder), f"null with model.format={kind}",
                                     "the file holds the architecture with the weights: set model.builder=null")
        if kind is ModelFormat.PICKLE and not self.trust_pickle:
            raise ConfigError.single("trust_pickle", False, "true with model.format=pickle",
                                     "unpickling runs code from the file: set it only for a file you trust")
        if self.weights and self.weights.endswith(SAFETENSORS) and kind not in (ModelFormat.AUTO,
                                                                               ModelFormat.STATE_DICT):
            raise ConfigError.single("format", kind.value, "auto or state_dict for a .safetensors file",
                                     "safetensors files hold tensors only")
        if self.builder is None and (not self.weights or kind is ModelFormat.STATE_DICT):
            raise ConfigError.single("builder", None, "a `_target_` node that builds the model",
                                     "or set model.weights to a TorchScript archive, a .pt2 program, or a "
                                     "pickled model (with trust_pickle=true)")


@dataclass(frozen=True)
class DataConfig:
    source: dict[str, Any]                 # `_target_` returning a Split, (inputs, targets), a Dataset or a DataLoader
    calibration: dict[str, Any] | None = None  # `_target_` node for calibration/QAT data, never the eval rows
    batch_size: int = 150
    max_batches: int | None = None
    metric: str | None = "top1_accuracy"   # task metric on the targets; null for unlabelled data
    dynamic_batch: bool = True             # the batch dim is dynamic in the input spec and exports
    # more dynamic dims: {input_ids: {1: seq}}, or bounded: {rows: {1: {label: tokens, max: 8}}}
    dynamic_dims: dict[str, dict[int, Any]] | None = None

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


@dataclass(frozen=True)
class LoadedModel:
    module: Any
    format: ModelFormat
    signature: ProgramSignature | None = None   # how a .pt2 program must be called


@register_stage("load", config=LoadConfig, keys=("model", "data"))
class LoadStage:
    """Build the model and load its weights (safely); cut the eval data into batches."""

    requires = frozenset()
    provides = frozenset()
    cache = "memory"   # the next job of a sweep in this process gets its own copy (ptflow.core.stage_cache)

    def __init__(self, config: LoadConfig):
        self.config = config

    def consumes(self) -> frozenset[Form]:
        return frozenset()

    def produces(self, given: Form | None) -> Form:
        return FORMS.get(self.model_format, Form.EAGER)

    @cached_property
    def model_format(self) -> ModelFormat:
        """What model.weights holds: as configured, or read from the file's zip directory
        (a state_dict when there is no file or it cannot be read: the pre-flight says why)."""
        return _file_format(self.config.model) or ModelFormat.STATE_DICT

    def explain(self, env: Environment) -> list[Note]:
        if self.model_format in FORMS:
            return [Note(f"model.weights is {describe_format(self.model_format)}: it is the baseline, "
                         f"as loaded ({self.produces(None)})")]
        return []

    def preflight(self, env: Environment) -> list[Problem]:
        model, data, imports = self.config.model, self.config.data, env.import_targets
        problems = check_target(data.source, "data.source", imports)
        if data.calibration is not None:
            problems += check_target(data.calibration, "data.calibration", imports)
        no_targets = traits_of(data.source).no_targets if imports else None
        why = no_targets(_arguments(data.source)) if no_targets and data.metric is not None else None
        if why:
            problems.append(Problem("data.metric", data.metric, "null for data without targets", why))
        if model.builder is not None:
            problems += check_target(model.builder, "model.builder", imports)
        if model.weights:
            problems += _weights_file_problems(model)
        return problems

    def run(self, artifact: Artifact | None, ctx: RunContext) -> Artifact:
        data = self.config.data
        if traits_of(data.source).synthetic:
            ctx.warn("data.synthetic", f"data.source ({_target_name(data.source)}) makes up random inputs "
                                       "without targets: this run's numbers are latency and baseline-vs-"
                                       "optimized agreement only, with no task metric; real inputs may "
                                       "take other paths through the model")
        limit = data.batch_size * data.max_batches if data.max_batches else None
        split = as_split(instantiate(data.source), limit, "data.source")
        batches = tuple(Batch(b.inputs.map(lambda t: t.to(ctx.device)), b.target)
                        for b in make_batches(split, data.batch_size, data.max_batches))
        loaded = load_model(self.config.model, ctx.warn)
        module = _for_inference(loaded.module, ctx.device)
        arg_names = forward_names(module)
        if loaded.signature is not None:   # a .pt2 program takes its inputs as it was exported with
            batches = fit_to_program(batches, arg_names, loaded.signature.positional, loaded.signature.keywords,
                                     f"the program in {self.config.model.weights}")
        else:
            check_keywords(module, arg_names, batches[0].inputs)
        try:
            spec = batches[0].inputs.spec(arg_names, data.dynamic_batch, data.dynamic_dims)
        except ValueError as error:
            raise InputError(f"{error}; fix data.dynamic_dims (input name -> {{dim index: label}})") from None
        dataset = describe_data(data.source, batches, arg_names, DataContext.EVAL)
        return Artifact(
            model=module, form=FORMS.get(loaded.format, Form.EAGER), module=module, inputs=spec,
            batches=batches, device=ctx.device, dtype=dtype_of(module),
            output_key=self.config.model.output_key,
            task_metric=data.metric,
            settings=dict(ctx.settings),
            calibration=data.calibration,
            datasets=(dataset,),
            metrics={"load.parameters": float(parameter_count(module)),
                     "load.size_mb": model_size_mb(module),
                     "load.eval_examples": float(sum(b.inputs.batch_size() for b in batches)),
                     "load.batches": float(len(batches))},
        )


def _target_name(node: Mapping[str, Any] | None) -> str:
    return str(node.get("_target_")) if isinstance(node, Mapping) else str(node)


def _arguments(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if not k.startswith("_")}


def _for_inference(module: Any, device: str) -> Any:
    """On `device`, in eval mode, without gradients (also TorchScript modules, which refuse
    Module.requires_grad_)."""
    module = module.to(device)
    try:
        module = module.eval()
    except NotImplementedError:   # a .pt2 program's module: it keeps the mode it was exported in
        pass
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _file_format(model: ModelConfig) -> ModelFormat | None:
    """model.format, or for auto the format read from the file (None: no file, or unreadable)."""
    if model.format is not ModelFormat.AUTO:
        return model.format
    if not model.weights:
        return None
    try:
        return sniff(resolve_path(model.weights))
    except FileNotFoundError:   # pkg:// of a package that is not installed
        return None


def _builder_problem(model: ModelConfig, path: Path, found: ModelFormat) -> Problem | None:
    """A builder where the file brings its own architecture, or none where it needs one."""
    if found in FORMS and model.builder is not None:
        return Problem("model.builder", _target_name(model.builder), f"null: {path} is {describe_format(found)}",
                       "the file holds the architecture with the weights, so the builder would go "
                       "unused: set model.builder=null")
    if found in (ModelFormat.STATE_DICT, ModelFormat.PICKLE) and model.builder is None and (
            not model.trust_pickle or path.suffix in SAFETENSORS):
        return Problem("model.builder", None, "a `_target_` node that builds the model",
                       f"{path} holds a state_dict (tensors only): model.builder makes the module it loads "
                       "into" + ("" if path.suffix in SAFETENSORS else "; a whole model saved with "
                                 "torch.save(model) loads with model.trust_pickle=true, for a file you trust"))
    return None


def _weights_file_problems(model: ModelConfig) -> list[Problem]:
    """Pre-flight of model.weights: the file exists, has a known suffix, looks like one, and
    holds what model.format and model.builder expect."""
    text = model.weights
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
    if defect is not None:
        return [Problem("model.weights", text, expected_format(path), f"{defect}; fix: {fix_hint(path)}")]
    found = sniff(path) or ModelFormat.STATE_DICT
    wanted = model.format
    if wanted is not ModelFormat.AUTO and found is not (
            ModelFormat.STATE_DICT if wanted is ModelFormat.PICKLE else wanted):
        return [Problem("model.format", wanted.value, f"the format of model.weights ({path})",
                        f"the file is {describe_format(found)}: set model.format={found.value} or auto")]
    problem = _builder_problem(model, path, found)
    if problem is None and not model.trust_pickle:   # what loading it would run, before anything loads
        unsafe = safety_problem(path, found)
        if unsafe is not None:
            problem = Problem("model.weights", text, "a file that loads without running code from it", unsafe)
    return [problem] if problem else []


def load_model(config: ModelConfig, warn: Warn = ignore_warning) -> LoadedModel:
    """The model as model.format (or the file) says: a TorchScript module, a .pt2 program's
    module, or the builder's module with the weights file loaded. `warn(key, message)` hears
    of casts and skipped keys, which load_state_dict does silently."""
    import torch

    if config.weights is None:
        if not traits_of(config.builder).loads_weights:
            warn("load.weights", "model.weights is null: using the parameters model.builder creates "
                                 "(random unless the builder loads weights itself)")
        return LoadedModel(instantiate(config.builder), ModelFormat.STATE_DICT)
    path = resolve_path(config.weights)
    found = _file_format(config) or ModelFormat.STATE_DICT
    conflict = _builder_problem(config, path, found) if found in FORMS else None
    if conflict is not None:
        raise InputError(f"model.builder: expected {conflict.expected}; {conflict.hint}")
    if found is ModelFormat.TORCHSCRIPT:
        return LoadedModel(read_torchscript(path), found)
    if found is ModelFormat.PT2:
        module, signature = read_program(path, config.trust_pickle)
        return LoadedModel(module, found, signature)
    loaded = read_weights(path, config.trust_pickle)
    if isinstance(loaded, torch.nn.Module):
        return LoadedModel(loaded, ModelFormat.PICKLE)
    if config.format is ModelFormat.PICKLE or config.builder is None:
        raise InputError(f"model.weights: {path} holds a {type(loaded).__name__}, not a pickled model; "
                         "set model.builder to the architecture its weights belong to (and model.format=auto)")
    state = select_state_dict(loaded, config.state_dict_key, path)
    module = instantiate(config.builder)
    missing, unexpected = check_keys(module, state, config.strict, path)
    if missing or unexpected:
        warn("load.strict", partial_load_message(path, missing, unexpected))
    cast = casts(module, state)
    if cast:
        warn("load.dtype", cast)
    module.load_state_dict(state, strict=config.strict)
    return LoadedModel(module, ModelFormat.STATE_DICT)


def build_model(config: ModelConfig, warn: Warn = ignore_warning) -> torch.nn.Module:
    """The loaded model's module (see load_model)."""
    return load_model(config, warn).module
