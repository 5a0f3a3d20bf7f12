"""torch.compile backends: eager (no compilation), inductor, inductor_max_autotune and
cudagraphs (inductor's reduce-overhead mode: CUDA graphs, CUDA only)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Form
from ptflow.stages.compile.registry import CompileJob, CompileMode, compile_backend

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

COMPILABLE = frozenset({Form.EAGER, Form.QUANTIZED, Form.EXPORTED, Form.PACKED})
NOT_SCRIPTED = {Form.SCRIPTED: "torch.compile cannot compile a TorchScript module (it traces Python code, which "
                               "TorchScript does not hold): use compile=eager, or load the model from a state_dict "
                               "or a .pt2 program"}
# torch.compile wraps the module and leaves it as it is: a legacy_dynamic model stays torch.ao's packed
# one, so the plan must go on refusing what needs torch.export after it (export.formats=[pt2], ...)
KEEPS = frozenset({Form.PACKED})


@compile_backend("eager", summary="no compilation: the model runs as it is", form=Form.EAGER)
def eager(job: CompileJob) -> Any:
    return job.model


def _compile(job: CompileJob, mode: CompileMode) -> Any:
    """torch.compile with inductor; compiles lazily, at the first call the stage times."""
    import torch
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # a fresh cache per run: sweep jobs in one process must not share guards
    # Freezing folds the (never-trained) weights into the graph as constants, so inductor can
    # prepack them and fuse PT2E's quantize/dequantize pairs into int8 kernels. It is global
    # inductor config: every run sets it, so sweep jobs in one process do not inherit it.
    inductor_config.freezing = job.config.freezing
    # max-autotune writes its kernel-choice tables to stderr: noise on ptflow's console
    inductor_config.max_autotune_report_choices_stats = False
    inductor_config.autotune_num_choices_displayed = 0
    compiled = torch.compile(job.model, backend="inductor", mode=mode.value, fullgraph=job.config.fullgraph,
                             dynamic=job.config.dynamic)
    return compiled


@compile_backend("inductor", summary="torch.compile (inductor), compile.mode as set", accepts=COMPILABLE,
                 refusals=NOT_SCRIPTED, inductor=True, keeps=KEEPS)
def inductor(job: CompileJob) -> Any:
    return _compile(job, job.config.mode)


@compile_backend("inductor_max_autotune", summary="torch.compile max-autotune (no CUDA graphs on CPU)",
                 accepts=COMPILABLE, refusals=NOT_SCRIPTED, inductor=True, keeps=KEEPS)
def inductor_max_autotune(job: CompileJob) -> Any:
    on_cuda = job.artifact.device.startswith("cuda")
    return _compile(job, CompileMode.MAX_AUTOTUNE if on_cuda else CompileMode.MAX_AUTOTUNE_NO_CUDAGRAPHS)


@compile_backend("cudagraphs", summary="torch.compile reduce-overhead: CUDA graphs replay whole calls",
                 devices=("cuda",), accepts=COMPILABLE, refusals=NOT_SCRIPTED, inductor=True, keeps=KEEPS)
def cudagraphs(job: CompileJob) -> Any:
    return _compile(job, CompileMode.REDUCE_OVERHEAD)
