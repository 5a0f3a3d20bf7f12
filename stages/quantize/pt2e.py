"""Static int8 quantization through PT2E (torchao): torch.export -> prepare with
X86InductorQuantizer -> calibrate (or fine-tune, QAT) -> convert.

A converted model holds quantize/dequantize pairs around float ops: eager runs them as
written (slow); inductor fuses them into int8 kernels. The plan warns when no
compile=inductor follows.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ptflow.core.spec import call, export_example, select_output
from ptflow.core.stage import Environment
from ptflow.inputs.calibration import cycle
from ptflow.stages.quantize.registry import Needs, Quantized, QuantizeJob, quantize_recipe, run_calibration
from ptflow.stages.quantize.torchao import import_torchao

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
    example, shapes = export_example(job.artifact.inputs, job.artifact.example.inputs)
    return torch.export.export(job.module, example.args, dict(example.kwargs), dynamic_shapes=shapes).module()


@quantize_recipe("int8_static", summary="calibrated static int8 (PT2E, X86InductorQuantizer)",
                 needs=Needs.CALIBRATION, modules=("Linear", "Conv2d"), observer=OBSERVERS,
                 advice=_wants_inductor)
def int8_static(job: QuantizeJob) -> Quantized:
    import_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer, chosen = _quantizer(job, is_qat=False)
    prepared = prepare_pt2e(_export(job), quantizer)
    run_calibration(prepared, job.data, job.ctx)
    converted = _drop_unused(convert_pt2e(prepared))
    return Quantized(converted, converted, chosen)


@quantize_recipe("int8_qat", summary="int8 quantization-aware fine-tuning (PT2E), then convert",
                 needs=Needs.TRAINING, modules=("Linear", "Conv2d"), advice=_wants_inductor)
def int8_qat(job: QuantizeJob) -> Quantized:
    import time

    import_torchao()
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    job.module.train().requires_grad_(True)
    quantizer, chosen = _quantizer(job, is_qat=True)
    prepared = prepare_qat_pt2e(_export(job), quantizer)
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
