"""Static int8 quantization through PT2E (torchao): torch.export -> prepare with
X86InductorQuantizer -> calibrate (or fine-tune, QAT) -> convert.

A converted model holds quantize/dequantize pairs around float ops: eager runs them as
written (slow); inductor fuses them into int8 kernels. The plan warns when no
compile=inductor follows.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ptflow.core.errors import InputError
from ptflow.core.spec import call, export_example, select_output
from ptflow.core.stage import Environment
from ptflow.inputs.calibration import cycle
from ptflow.stages.quantize.registry import Needs, Quantized, QuantizeJob, quantize_recipe, run_calibration
from ptflow.stages.quantize.torchao import import_torchao

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

OBSERVERS = ("histogram", "minmax", "moving_average")


def _wants_inductor(env: Environment) -> str | None:
    backend = (env.config.get("compile") or {}).get("backend")
    if "compile" in env.pipeline and backend == "inductor":
        return None
    return ("a PT2E-converted model runs its quantize/dequantize ops one by one in eager and is "
            "usually slower than fp32; add compile=inductor (it fuses them into int8 kernels) unless "
            "you only want the exported file")


def _quantizer(job: QuantizeJob, is_qat: bool) -> tuple[Any, list[str]]:
    import_torchao()
    from torchao.quantization.pt2e import observer as obs
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    config = x86.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    observer = job.config.observer
    if observer and observer != "histogram":
        ctor = obs.MinMaxObserver if observer == "minmax" else obs.MovingAverageMinMaxObserver
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctor.with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = x86.X86InductorQuantizer()
    chosen = job.selection.names(job.module)
    for name in chosen:
        quantizer.set_module_name_qconfig(name, config)
    return quantizer, chosen


def _export(job: QuantizeJob) -> Any:
    import torch

    example, shapes = export_example(job.artifact.inputs, job.artifact.example.inputs)
    return torch.export.export(job.module, example.args, dict(example.kwargs), dynamic_shapes=shapes).module()


def _prepare(prepare: Callable[[Any, Any], Any], job: QuantizeJob, quantizer: Any) -> Any:
    """prepare_pt2e / prepare_qat_pt2e, with a known upstream failure turned into advice."""
    exported = _export(job)
    try:
        return prepare(exported, quantizer)
    except ValueError as error:
        if "more than one output node" not in str(error):
            raise
        raise InputError(_shared_module_advice(job, error)) from error


def _shared_module_advice(job: QuantizeJob, error: ValueError) -> str:
    """X86InductorQuantizer matches patterns (conv-bn-relu, conv + add + relu) by module over
    the whole graph before quantize.modules/include narrow anything; a module called more than
    once (ResNet's one `self.relu` per block) makes its match span two outputs and it raises."""
    import torch

    calls: dict[str, int] = {}
    leaves = [(n, m) for n, m in job.module.named_modules() if n and not any(m.children())]
    hooks = [m.register_forward_pre_hook(lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, m in leaves]
    try:
        with torch.no_grad():
            call(job.module, job.artifact.example.inputs)
    except Exception:   # the advice below stands without naming the modules
        pass
    finally:
        for hook in hooks:
            hook.remove()
    kinds = dict(leaves)
    shared = [f"{n} ({type(kinds[n]).__name__}, {k} calls)" for n, k in calls.items() if k > 1]
    where = f": {', '.join(shared[:4])}" if shared else " (e.g. ResNet's shared `relu`)"
    return (f"quantize={job.config.method}: torchao's X86InductorQuantizer fails on {type(job.module).__name__} with "
            f"{str(error)!r} (upstream: one module called more than once{where}; quantize.modules/include do "
            "not avoid it). Give each call its own module (one nn.ReLU per use, or torch.relu) and PT2E "
            "quantizes it; or use quantize=int8_dynamic or int8_weight_only (Linear layers only: the "
            "convolutions stay float), or bf16")


def _graph_converted(job: QuantizeJob, result: Quantized) -> set[str]:
    """The modules whose ops read a dequantized constant (their int8 weight) in the converted
    graph, named by the nn_module_stack torch.export records on each node."""
    import torch

    found = set()
    for node in result.module.graph.nodes:
        inputs: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), inputs.append)
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and stack and any(_dequantized_constant(arg) for arg in inputs):
            found.add(str(list(stack.values())[-1][0]).split("@")[0])   # "relu@1": a module's 2nd call
    return found


def _dequantized_constant(node: torch.fx.Node) -> bool:
    import torch

    source = node.args[0] if node.op == "call_function" and node.args else None
    return "dequantize" in str(node.target) and isinstance(source, torch.fx.Node) and source.op == "get_attr"


@quantize_recipe("int8_static", summary="calibrated static int8 (PT2E, X86InductorQuantizer)",
                 needs=Needs.CALIBRATION, modules=("Linear", "Conv2d"), observer=OBSERVERS,
                 advice=_wants_inductor, converted=_graph_converted)
def int8_static(job: QuantizeJob) -> Quantized:
    import_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer, chosen = _quantizer(job, is_qat=False)
    prepared = _prepare(prepare_pt2e, job, quantizer)
    run_calibration(prepared, job.data, job.ctx)
    converted = _drop_unused(convert_pt2e(prepared))
    return Quantized(converted, converted, chosen)


@quantize_recipe("int8_qat", summary="int8 quantization-aware fine-tuning (PT2E), then convert",
                 needs=Needs.TRAINING, modules=("Linear", "Conv2d"), advice=_wants_inductor,
                 converted=_graph_converted)
def int8_qat(job: QuantizeJob) -> Quantized:
    import torch

    import time

    import_torchao()
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    job.module.train().requires_grad_(True)
    quantizer, chosen = _quantizer(job, is_qat=True)
    prepared = _prepare(prepare_qat_pt2e, job, quantizer)
    move_exported_model_to_train(prepared)
    optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=job.config.qat.lr)
    teacher, key = job.artifact.baseline.model if job.artifact.baseline else None, job.artifact.output_key
    losses: list[float] = []
    started = time.perf_counter()
    torch.manual_seed(job.ctx.seed)
    for batch in job.ctx.progress(cycle(job.data.batches, job.config.qat.steps), desc="qat",
                                  total=job.config.qat.steps, unit="step"):
        output = select_output(call(prepared, batch.inputs), key)
        loss = _loss(output, batch, teacher, key)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    job.data.seconds += time.perf_counter() - started
    move_exported_model_to_eval(prepared)
    converted = _drop_unused(convert_pt2e(prepared))
    converted.requires_grad_(False)
    return Quantized(converted, converted, chosen,
                     metrics={"quantize.qat_loss_first": losses[0], "quantize.qat_loss_last": losses[-1]},
                     series={"quantize.qat_loss": tuple(losses)})


def _drop_unused(converted: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Conversion folds each quantized weight into a new int8 constant but leaves the float
    parameter attached; drop tensors the graph never reads, so the model (and its export)
    carries only what it computes with."""
    used = {str(node.target) for node in converted.graph.nodes if node.op == "get_attr"}
    for name, _ in [*converted.named_parameters(), *converted.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, leaf)
    return converted


def _loss(output: torch.Tensor, batch: Any, teacher: Any, key: str | None) -> torch.Tensor:
    """Cross-entropy on integer class ids when the batch has them; otherwise match the
    float model's outputs (distillation by mean squared error)."""
    import torch

    target = batch.target
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and output.dim() == 2 \
            and target.shape == output.shape[:1]:
        return torch.nn.functional.cross_entropy(output.float(), target.to(output.device))
    if teacher is None:
        raise ValueError("int8_qat without class-id targets distils from the float model, which needs "
                         "validate in the pipeline before quantize")
    with torch.no_grad():
        reference = select_output(call(teacher, batch.inputs), key).float()
    return torch.nn.functional.mse_loss(output.float(), reference)
