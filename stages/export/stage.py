"""export: write the model in every format of `export.formats`, each file checked, then manifest.json.

Each format is a registered writer (``registry.py`` beside this module). Every file is written
under a temporary name, reloaded into a fresh object and run on every eval batch (and a
second size of each dynamic dim) against the in-memory model; only when every format
passed are they renamed into place, and the manifest is written last: a manifest next to
the files means all of them are complete and checked. If any format fails, none is kept.
An input example with the outputs it gives (``<name>.example.safetensors``) goes with them.

The stage never talks to MLflow: the tracker logs the pt2 (and onnx) file as an MLflow
model from the manifest once the run has finished, and registers it when
``export.register_as`` names a registered model.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.artifact import Artifact, Form
from ptflow.core.errors import InputError, Problem
from ptflow.core.files import creatable_dir_problem, partial_file, sha256_file, write_atomic
from ptflow.core.spec import BATCH_DIM, ModelInputs, call, export_example, flatten_outputs
from ptflow.core.stage import Environment, Note, RunContext, register_stage
from ptflow.core.targets import resolve_path
from ptflow.stages.export import fresh
from ptflow.stages.export.config import ExportConfig
from ptflow.stages.export.diagnose import diagnose, trace_check
from ptflow.stages.export.example import write_example
from ptflow.stages.export.registry import (REGISTERED_BY_PTFLOW, ExportFormat, ExportJob, formats, output_packages,
                                          register_output_types)
from ptflow.stages.export.requires import Needs, program_needs

TORCH_EXPORT_FORMS = frozenset(Form)   # minus what a chosen format refuses (consumes())
@register_stage("export", config=ExportConfig)
class ExportStage:
    """Export to every format in export.formats (dynamic dims kept), reload and check each, write manifest.json."""

    requires = frozenset()
    provides = frozenset({"export"})

    def __init__(self, config: ExportConfig):
        self.config = config
        self.formats = [formats()[name] for name in config.formats]
        self._early: fresh.FreshCheck | None = None   # the first format's check, started by `start`
        self._early_allowed = True

    def consumes(self) -> frozenset[Form]:
        return frozenset(f for f in TORCH_EXPORT_FORMS if not any(f in fmt.refuses for fmt in self.formats))

    def refusal(self, given: Form) -> str | None:
        reasons = [f"export.formats={fmt.name} {fmt.refuses[given]}" for fmt in self.formats if given in fmt.refuses]
        return "; ".join(reasons) or None

    def produces(self, given: Form | None) -> Form:
        # the reloaded .pt2 program goes on when there is one; otherwise the model is unchanged
        return Form.EXPORTED if "pt2" in self.config.formats else (given or Form.EAGER)

    def preflight(self, env: Environment) -> list[Problem]:
        # `start` imports under the device lock: a benchmark that takes no lock would not wait for it
        self._early_allowed = ((env.config.get("benchmark") or {}).get("lock", True) is not False
                               or "benchmark" not in env.pipeline)
        problems = []
        method = env.quantize_method_before("export")
        for fmt in self.formats:
            if method in fmt.refuses_recipes:
                problems.append(Problem("export.formats", fmt.name, f"a format that can follow quantize={method}",
                                        fmt.refuses_recipes[method]))
        if self.config.register_as is not None:
            tracking = env.config.get("tracking") or {}
            if tracking.get("backend") != "mlflow" or not tracking.get("log_models", True):
                problems.append(Problem("export.register_as", self.config.register_as,
                                        "tracking=mlflow with tracking.log_models=true (the registry is MLflow's)",
                                        "drop export.register_as, or use tracking=mlflow"))
        if self.config.dir:
            reason = creatable_dir_problem(resolve_path(self.config.dir))
            if reason:
                problems.append(Problem("export.dir", self.config.dir, "a directory ptflow can create and write",
                                        f"{reason}; pick another export.dir, or null for <run dir>/export"))
        return problems

    def explain(self, env: Environment) -> list[Note]:
        traced = [fmt.name for fmt in self.formats if fmt.uses_export]
        notes = []
        if traced:
            notes.append(Note(f"checked right after validate: the unoptimized model is traced once with torch.export "
                              f"and the run's dynamic dims ({', '.join(traced)} need it), so a dim or a branch "
                              "torch.export cannot take stops the run before quantize, compile or benchmark"))
        for fmt in self.formats:
            if fmt.precheck is not None:
                notes.append(Note(f"checked right after validate: {fmt.name}'s own trial on the unoptimized model"))
        return notes

    def early_check(self, artifact: Artifact, ctx: RunContext) -> dict[str, float]:
        """Before the expensive stages: torch.export's trace of the eager model with the declared
        dynamic dims (once, for every format built on it), and each format's own precheck (the
        torchscript trace); InputError with torch's diagnosis in the run's terms."""
        import torch

        prechecks = [fmt for fmt in self.formats if fmt.precheck is not None]
        traced = [fmt.name for fmt in self.formats if fmt.uses_export]
        if artifact.form is not Form.EAGER or not (traced or prechecks):
            return {}
        started = time.perf_counter()
        if traced:
            with torch.inference_mode():
                register_output_types(call(artifact.module, artifact.example.inputs))
            trace_check(artifact.module, artifact.inputs, artifact.example.inputs, strict=self.config.strict,
                        dynamic=True, what=f"export.formats={','.join(traced)}")
        for fmt in prechecks:
            fmt.precheck(artifact.module, export_example(artifact.inputs, artifact.example.inputs)[0])
        return {"export.trace_check_s": time.perf_counter() - started}

    def start(self, ctx: RunContext) -> None:
        """Called before the first stage: the first format's fresh-process check imports torch
        (and what the format's loader imports first) while the run loads its model — 1.5-2 s
        it would otherwise add at the end — holding the device's timed-section lock meanwhile,
        so that the benchmark never times beside it (not with benchmark.lock=false)."""
        if self.config.verify and self.config.fresh_check and self._early_allowed and self._early is None:
            self._early = fresh.spawn_guarded(ctx.run_dir, ctx.device, self.formats[0].warm)

    def stop(self) -> None:
        """The early check, when the run ended before this stage used it."""
        if self._early is not None:
            self._early.kill()
            self._early = None

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        import torch

        out_dir = resolve_path(self.config.dir) if self.config.dir else ctx.run_dir / "export"
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = out_dir / "manifest.json"
        metrics: dict[str, float] = {}
        entries: list[dict[str, Any]] = []
        moves: list[tuple[Path, Path]] = []
        fresh_checks: list[fresh.FreshCheck | None] = [None] * len(self.formats)
        reloaded_program = None
        with contextlib.ExitStack() as stack:
            if self.config.verify and self.config.fresh_check:   # the rest start now: they import torch meanwhile
                early, self._early = self._early, None
                fresh_checks = [early or fresh.spawn(out_dir, warm=self.formats[0].warm)]
                fresh_checks += [fresh.spawn(out_dir, warm=fmt.warm) for fmt in self.formats[1:]]
                stack.callback(lambda: [check.kill() for check in fresh_checks])
            with torch.inference_mode():
                sample_output = call(artifact.module, artifact.example.inputs)
            register_output_types(sample_output)
            traced, shapes = export_example(artifact.inputs, artifact.example.inputs)
            job = ExportJob(artifact.module, artifact, ctx, traced, shapes, self.config.strict, self.config.opset)
            checks = _check_inputs(artifact)
            expected = _expected_outputs(artifact.module, checks)
            # the example first: the fresh-process check of each file runs on its inputs
            example_target = out_dir / f"{self.config.name}.example.safetensors"
            example_partial = stack.enter_context(partial_file(
                out_dir / f".{self.config.name}.partial-{os.getpid()}.example.safetensors"))
            example = write_example(example_partial, artifact, artifact.module, expected)
            example.update(file=example_target.name, sha256=sha256_file(example_partial))
            for fmt, fresh_check in zip(self.formats, fresh_checks):
                target = out_dir / f"{self.config.name}{fmt.suffix}"
                # the partial keeps the final suffix (torch.export and AOTI want .pt2)
                partial = stack.enter_context(partial_file(
                    out_dir / f".{self.config.name}.partial-{os.getpid()}{fmt.suffix}"))
                entry = self._write_one(fmt, job, partial, target, sample_output, fresh_check)
                if fresh_check is not None:   # it loads the file while this process reloads it too
                    fresh_check.send(fmt.name, entry["load"].replace(repr(target.name), repr(partial.name)),
                                     entry["call"], example, example_partial.name, entry.get("tensors", 0),
                                     "cpu" if fmt.host_inputs else artifact.device, out_dir)
                reloaded = self._verify(fmt, job, partial, entry, checks, expected)
                if fmt.name == "pt2":
                    reloaded_program = reloaded
                metrics.update({f"export.{fmt.name}.{k}": v for k, v in entry["metrics"].items()})
                entries.append(entry)
                moves.append((partial, target))
            moves.append((example_partial, example_target))
            for check, entry in zip(fresh_checks, entries):
                if check is None:
                    continue
                seconds = fresh.verdict(check, entry, self.config.tolerance_of(formats()[check.format]))
                metrics[f"export.{check.format}.fresh_check_s"] = seconds
                entry["metrics"]["fresh_check_s"] = seconds
            first = self.formats[0].name   # the run's headline export metrics: the first format's
            metrics.update({f"export.{k}": metrics[f"export.{first}.{k}"]
                            for k in ("export_s", "size_mb", "reload_max_abs_error")})
            manifest = _manifest(artifact, ctx, entries, sample_output, {**artifact.metrics, **metrics})
            manifest.update(example=example, register_as=self.config.register_as)
            # All complete and checked: they may take their final names. Until here an earlier
            # export in this dir stayed intact; from here its manifest must not vouch for new files.
            manifest_path.unlink(missing_ok=True)
            for partial, target in moves:
                os.replace(partial, target)
        try:
            write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
        except BaseException:
            for _, target in moves:   # no manifest, no files: never leave them looking complete
                target.unlink(missing_ok=True)
            raise
        files = {f"export.{fmt.name}": target for fmt, (_, target) in zip(self.formats, moves)}
        files["export.example"] = example_target
        files["export.manifest"] = manifest_path
        if reloaded_program is not None:
            artifact = artifact.evolve(model=reloaded_program, module=reloaded_program, form=Form.EXPORTED)
        return artifact.with_metrics(metrics).with_files(files)

    def _write_one(self, fmt: ExportFormat, job: ExportJob, partial: Path, target: Path, sample_output: object,
                   fresh_check: fresh.FreshCheck | None) -> dict[str, Any]:
        """Write one format to `partial`; its manifest entry, without the reload check (``_verify``).
        A program format's needs are read from the traced program before the file is written,
        so that its fresh-process check imports them meanwhile."""
        _check_free_space(partial, _expected_mb(job.artifact))
        with _failure_named(fmt, job):
            started = time.perf_counter()
            program = job.program() if fmt.program else None   # traced once; the writer reuses it
            export_s = time.perf_counter() - started
            needs = program_needs(program, sample_output, REGISTERED_BY_PTFLOW) if fmt.program else Needs()
            if fresh_check is not None:
                fresh_check.prepare(needs.imports)
            started = time.perf_counter()
            extra = fmt.write(job, partial)
            export_s += time.perf_counter() - started
            needs = needs.plus(extra.pop("requires", ()))   # what the writer found its file needs
        size = partial.stat().st_size
        packages = tuple(dict.fromkeys(fmt.packages + tuple(needs.distributions())))
        return {"format": fmt.name, "file": target.name, "sha256": sha256_file(partial), "size_bytes": size,
                "load": needs.statements() + fmt.load_hint.format(file=target.name), "call": fmt.call_hint,
                "requires": list(needs.imports), "tolerance": self.config.tolerance_of(fmt),
                "versions": _package_versions(packages), **extra,
                "metrics": {"export_s": export_s, "size_mb": size / 1e6}}

    def _verify(self, fmt: ExportFormat, job: ExportJob, partial: Path, entry: dict[str, Any],
                checks: list[ModelInputs], expected: list[list[torch.Tensor]]) -> Any:
        """Reload `partial` into a fresh object here and compare it with the in-memory model on
        every check input (metric reload_max_abs_error in `entry`); the reloaded pt2 program."""
        error, reloaded = float("nan"), None
        if self.config.verify:
            with _failure_named(fmt, job):
                runner = fmt.load(partial, job)
                error = _max_abs_error(runner, checks, expected, fmt.name)
                reloaded = getattr(runner, "module", None)
        tolerance = entry["tolerance"]
        if error > tolerance:
            raise InputError(f"export.formats={fmt.name}: the reloaded file differs from the model by {error:.3g} "
                             f"(export.tolerance.{fmt.name}={tolerance}); the export is not faithful. If the "
                             "runtime's kernels are expected to differ (int8 or half precision in another "
                             f"runtime), raise export.tolerance.{fmt.name} to a bound you accept")
        if reloaded is None and fmt.name == "pt2":
            reloaded = job.program().module()
        entry["metrics"]["reload_max_abs_error"] = error
        return reloaded


@contextlib.contextmanager
def _failure_named(fmt: ExportFormat, job: ExportJob) -> Iterator[None]:
    """A failure inside names the format: the stage name alone does not say which failed."""
    try:
        yield
    except (OSError, InputError):
        raise
    except Exception as error:
        raise InputError(f"export.formats={fmt.name}: writing or reloading the {fmt.name} file failed: "
                         f"{diagnose(error, job.spec)}") from error


def _check_inputs(artifact: Artifact) -> list[ModelInputs]:
    """Every eval batch, plus the example with each dynamic dim at another size (batch: one row)."""
    checks = [b.inputs for b in artifact.batches]
    example = artifact.example.inputs
    labels: dict[str, None] = {}
    for tensor in artifact.inputs.tensors:
        labels.update(dict.fromkeys(tensor.dynamic_dims().values()))
    for label in labels:
        checks.append(_resized(artifact, example, label))
    return checks


def _resized(artifact: Artifact, example: ModelInputs, label: str) -> ModelInputs:
    by_name = {t.name: t for t in artifact.inputs.tensors}
    names = [name for name, _ in example.named([t.name for t in artifact.inputs.tensors[:len(example.args)]])]
    sliced = []
    for name, tensor in zip(names, list(example.args) + list(example.kwargs.values())):
        spec = by_name.get(name)
        for dim, dim_label in (spec.dynamic_dims().items() if spec else ()):
            if dim_label == label:
                size = tensor.shape[dim]
                keep = 1 if label == BATCH_DIM else max(1, size - 1)
                tensor = tensor.narrow(dim, 0, keep)
        sliced.append(tensor)
    args, kwargs = sliced[:len(example.args)], sliced[len(example.args):]
    return ModelInputs(tuple(args), dict(zip(example.kwargs, kwargs)))


def _expected_outputs(module: Any, checks: list[ModelInputs]) -> list[list[torch.Tensor]]:
    import torch

    with torch.inference_mode():
        return [[t for _, t in flatten_outputs(call(module, inputs))] for inputs in checks]


def _max_abs_error(runner: Any, checks: list[ModelInputs], expected: list[list[torch.Tensor]], name: str) -> float:
    """Max abs difference, reloaded file vs in-memory module, over every check input."""
    import torch

    worst = 0.0
    with torch.inference_mode():
        for inputs, want in zip(checks, expected):
            got = [t for _, t in flatten_outputs(runner(inputs))]
            if len(got) != len(want):
                raise InputError(f"export.formats={name}: the reloaded file returns {len(got)} output tensor(s), "
                                 f"the model {len(want)}")
            for a, b in zip(want, got):
                if a.shape != b.shape:
                    raise InputError(f"export.formats={name}: the reloaded file returns shape {tuple(b.shape)} "
                                     f"where the model returns {tuple(a.shape)} (inputs "
                                     f"{[tuple(t.shape) for t in list(inputs.args) + list(inputs.kwargs.values())]}); "
                                     "a dynamic dim was baked in")
                worst = max(worst, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    return worst


def _expected_mb(artifact: Artifact) -> float:
    m = artifact.metrics
    return next((m[k] for k in ("quantize.size_mb", "load.size_mb") if k in m), 0.0)


def _check_free_space(path: Path, expected_mb: float) -> None:
    """A disk that is already too full fails at once, naming the path."""
    free_mb = shutil.disk_usage(path.parent).free / 1e6
    if expected_mb and free_mb < expected_mb * 1.1:
        raise OSError(errno.ENOSPC, f"{free_mb:.1f} MB free, the export needs about {expected_mb:.1f} MB",
                      str(path))


def _package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    import torch

    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package == "torch":
                versions[package] = torch.__version__
    return versions


def _manifest(artifact: Artifact, ctx: RunContext, entries: list[dict[str, Any]], sample_output: object,
              metrics: dict[str, float]) -> dict[str, Any]:
    """Every file with what loading it needs; the inputs (str shapes = dynamic dims) and the run."""
    extra = sorted(output_packages(sample_output))   # e.g. transformers: its output classes
    return {
        "files": entries,
        "source_form": artifact.form.value,
        "inputs": artifact.inputs.describe(),
        "dynamic_dims": sorted({label for t in artifact.inputs.tensors for label in t.dynamic_dims().values()}),
        "outputs": [path for path, _ in artifact.baseline.outputs[0]] if artifact.baseline else None,
        "output_packages": extra,
        "config_hash": ctx.config_hash,
        "lineage": [{"stage": r.name, "config": r.config} for r in artifact.lineage],
        "versions": {"python": platform.python_version(),
                     **_package_versions(("torch", "torchao", "ptflow"))},
        "device": ctx.settings,
        "metrics": {k: v for k, v in sorted(metrics.items()) if not k.endswith("duration_s")},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# The formats ptflow ships (each module registers its own with @export_format).
from ptflow.stages.export import portable, torch_formats  # noqa: E402,F401

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

