"""compile: hand the model to a registered compiler backend (eager = none, inductor)."""
from __future__ import annotations

import enum
import time
import warnings
from dataclasses import dataclass

import torch

from ptflow.artifact import RUNNABLE, Artifact, Form
from ptflow.errors import ConfigError, Problem, invalid_choice
from ptflow.spec import call
from ptflow.stage import Environment, RunContext, register_stage

BACKENDS = ("eager", "inductor")


class CompileMode(str, enum.Enum):
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"        # CUDA graphs
    MAX_AUTOTUNE = "max-autotune"
    MAX_AUTOTUNE_NO_CUDAGRAPHS = "max-autotune-no-cudagraphs"


CUDA_ONLY_MODES = frozenset({CompileMode.REDUCE_OVERHEAD})


@dataclass(frozen=True)
class CompileConfig:
    backend: str = "eager"               # eager: no compilation; inductor: torch.compile
    mode: CompileMode = CompileMode.DEFAULT
    fullgraph: bool = False              # fail instead of falling back on graph breaks
    dynamic: bool | None = None          # None: torch decides (recompiles once on a new shape)
    freezing: bool = True                # inductor: weights as constants (prepacked); PT2E int8 needs it

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise invalid_choice("backend", self.backend, BACKENDS)
        if self.backend == "eager" and self.mode is not CompileMode.DEFAULT:
            raise ConfigError.single("mode", self.mode.value, "'default' with backend 'eager'",
                                     "modes apply to compile=inductor")


@register_stage("compile", config=CompileConfig)
class CompileStage:
    """torch.compile the model (backend inductor), timing the first, compiling call."""

    requires = frozenset()
    provides = frozenset()

    def __init__(self, config: CompileConfig):
        self.config = config

    def consumes(self) -> frozenset[Form]:
        # backend eager changes nothing, so it passes any model on (a TorchScript module too)
        if self.config.backend == "eager":
            return RUNNABLE
        return frozenset({Form.EAGER, Form.QUANTIZED, Form.EXPORTED, Form.PACKED})

    def refusal(self, given: Form) -> str | None:
        if given is Form.SCRIPTED:
            return (f"compile.backend={self.config.backend} cannot compile a TorchScript module "
                    "(torch.compile traces Python code, which a TorchScript archive does not hold): "
                    "use compile=eager, or load the model from a state_dict or a .pt2 program")
        return None

    def produces(self, given: Form | None) -> Form:
        return given if self.config.backend == "eager" else Form.COMPILED

    def preflight(self, env: Environment) -> list[Problem]:
        if self.config.mode in CUDA_ONLY_MODES and env.device_type != "cuda":
            return [Problem("compile.mode", self.config.mode.value, "a mode this device supports",
                            f"'{self.config.mode.value}' uses CUDA graphs, which need device=cuda")]
        return []

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        if self.config.backend == "eager":
            return artifact.with_metrics({"compile.compile_s": 0.0})
        torch._dynamo.reset()  # a fresh cache per run: sweep jobs in one process must not share guards
        # Freezing folds the (never-trained) weights into the graph as constants, so inductor can
        # prepack them and fuse PT2E's quantize/dequantize pairs into int8 kernels. It is global
        # inductor config: every run sets it, so sweep jobs in one process do not inherit it.
        import torch._inductor.config as inductor_config

        inductor_config.freezing = self.config.freezing
        compiled = torch.compile(artifact.model, backend="inductor", mode=self.config.mode.value,
                                 fullgraph=self.config.fullgraph, dynamic=self.config.dynamic)
        started = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            # torchao's tensor subclasses lack a cache-hash hook; inductor says so once per type.
            warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching")
            call(compiled, artifact.example.inputs)
        if artifact.device.startswith("cuda"):
            torch.cuda.synchronize()
        return artifact.evolve(model=compiled, form=Form.COMPILED).with_metrics(
            {"compile.compile_s": time.perf_counter() - started})
