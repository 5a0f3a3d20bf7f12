"""compile: hand the model to a registered compile backend or runtime.

Adding one: a function decorated with ``@compile_backend(name, ...)`` (in a module of the
``ptflow.stages`` entry-point group or a ``plugins`` module) plus
``conf/compile/<name>.yaml`` with ``backend: <name>`` (see ``registry.py``). The ones
ptflow ships live beside this module: ``inductor`` (eager, inductor, inductor_max_autotune,
cudagraphs), ``legacy`` (torchscript_trace, torchscript_script) and ``runtimes`` (aoti,
onnxruntime).

Build time (``compile.build_s``: tracing, exporting, packaging) and the first, cold call
(``compile.first_call_s``: where torch.compile compiles) are measured apart from the
steady-state latency benchmark reports; ``compile.compile_s`` is their sum.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact, Form
from ptflow.core.errors import Problem
from ptflow.core.spec import call
from ptflow.core.stage import Environment, RunContext, register_stage
from ptflow.core.targets import resolve_path
from ptflow.stages.compile.registry import _BACKENDS, CompileConfig, CompileJob, CompileMode


@register_stage("compile", config=CompileConfig)
class CompileStage:
    """Compile the model with the chosen backend or runtime, timing build and first call apart."""

    requires = frozenset()
    provides = frozenset()

    def __init__(self, config: CompileConfig):
        self.config = config
        self.backend = _BACKENDS[config.backend]
        self.cache_dir: Path | None = None

    def consumes(self) -> frozenset[Form]:
        return self.backend.accepts

    def refusal(self, given: Form) -> str | None:
        return self.backend.refusals.get(given)

    def produces(self, given: Form | None) -> Form:
        if given is not None and (self.backend.form is Form.EAGER or given in self.backend.keeps):
            return given
        return self.backend.form

    def preflight(self, env: Environment) -> list[Problem]:
        backend = self.backend
        if env.device_type not in backend.devices:
            return [Problem("compile.backend", backend.name, "a backend this device can run",
                            f"'{backend.name}' needs device={' or '.join(sorted(backend.devices))}"
                            + (" (CUDA graphs)" if backend.name == "cudagraphs" else "")
                            + f"; this run is on {env.device_type}")]
        if self.config.mode is CompileMode.REDUCE_OVERHEAD and env.device_type != "cuda":
            return [Problem("compile.mode", self.config.mode.value, "a mode this device supports",
                            "'reduce-overhead' uses CUDA graphs, which need device=cuda")]
        method = env.quantize_method_before("compile")
        if method in backend.refuses_recipes:
            return [Problem("compile.backend", backend.name, f"a backend that can follow quantize={method}",
                            backend.refuses_recipes[method])]
        if backend.inductor and self.config.cache:
            self.cache_dir = resolve_path(str(env.config.get("outputs_dir") or "outputs")) / "cache" / "inductor"
        return []

    def early_check(self, artifact: Artifact, ctx: RunContext) -> dict[str, float]:
        """Right after validate: a backend built on torch.export traces the eager model with the
        run's dynamic dims, and compile.fullgraph=true looks for graph breaks with dynamo — each
        stops the run now with torch's diagnosis instead of after quantize and calibration."""
        if artifact.form is not Form.EAGER:
            return {}
        from ptflow.stages.export.diagnose import graph_break_check, trace_check

        if self.backend.uses_export:
            seconds = trace_check(artifact.module, artifact.inputs, artifact.example.inputs, strict=False,
                                  dynamic=True, what=f"compile={self.backend.name}")
        elif self.backend.inductor and self.config.fullgraph:
            seconds = graph_break_check(artifact.module, artifact.example.inputs,
                                        what=f"compile={self.backend.name} compile.fullgraph=true")
        else:
            return {}
        return {"compile.trace_check_s": seconds}

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        import torch

        if self.backend.form is Form.EAGER and not self.config.channels_last:
            return artifact.with_metrics({"compile.compile_s": 0.0})
        model, module = artifact.model, artifact.module
        if self.config.channels_last:
            model, module = _channels_last(artifact, ctx)
        cache = _Cache(self.cache_dir) if self.backend.inductor else None
        job = CompileJob(model, module, artifact, self.config, ctx, ctx.run_dir / "compile")
        started = time.perf_counter()
        runnable = self.backend.build(job)
        built = time.perf_counter()
        inputs = artifact.example.inputs
        if self.config.channels_last:
            from ptflow.stages.compile.runners import ChannelsLastInputs

            runnable = ChannelsLastInputs(runnable)
        with torch.inference_mode(), warnings.catch_warnings():
            # torchao's tensor subclasses lack a cache-hash hook; inductor says so once per type
            # while compiling (at this first call): noise, not news. Timed calls stay unwrapped.
            warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching")
            call(runnable, inputs)
        if artifact.device.startswith("cuda"):
            torch.cuda.synchronize()
        first = time.perf_counter()
        metrics = {"compile.build_s": built - started, "compile.first_call_s": first - built,
                   "compile.compile_s": first - started}
        if cache is not None:
            metrics.update(cache.metrics())
        return artifact.evolve(model=runnable, module=module, form=self.produces(artifact.form)).with_metrics(metrics)


def _channels_last(artifact: Artifact, ctx: RunContext) -> tuple[Any, Any]:
    """A copy of the model with 4-D weights in channels_last (the baseline keeps its own)."""
    import torch

    module = copy.deepcopy(artifact.module)
    if not any(p.dim() == 4 for p in module.parameters()):
        ctx.warn("compile.channels_last", "compile.channels_last=true but the model has no 4-D (conv) "
                                          "weights: it changes nothing for this model")
    module = module.to(memory_format=torch.channels_last)
    model = module if artifact.model is artifact.module else artifact.model
    return model, module


USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")   # set by the user: ptflow keeps it


class _Cache:
    """Inductor's on-disk cache pointed at <outputs_dir>/cache/inductor (unless the user set
    TORCHINDUCTOR_CACHE_DIR), so repeated runs and sweep jobs reuse compiled kernels;
    reports whether it was warm and its hits."""

    def __init__(self, directory: Path | None):
        from torch._dynamo.utils import counters

        if directory is not None and USER_CACHE_DIR:
            directory = Path(USER_CACHE_DIR)
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
        self.warm = directory is not None and any(directory.iterdir())
        counters["inductor"].clear()
        self.counters = counters

    def metrics(self) -> dict[str, float]:
        found = self.counters["inductor"]
        # freezing bypasses inductor's FX-graph cache (constants are baked in); its compiled
        # kernels are still cached in the same dir
        return {"compile.cache_warm": 1.0 if self.warm else 0.0,
                "compile.cache_hits": float(found.get("fxgraph_cache_hit", 0)),
                "compile.cache_misses": float(found.get("fxgraph_cache_miss", 0)),
                "compile.cache_bypassed": float(found.get("fxgraph_cache_bypass", 0))}


# The backends and runtimes ptflow ships (each module registers its own with @compile_backend).
from ptflow.stages.compile import inductor, legacy, runtimes  # noqa: E402,F401

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

