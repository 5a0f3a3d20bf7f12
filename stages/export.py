"""export: torch.export the model to a .pt2 file plus manifest.json, atomically.

The .pt2 and the manifest are written under temporary names and renamed into place,
the manifest last: a manifest next to a file means that file is complete and checked.
"""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ptflow.artifact import Artifact, Form
from ptflow.errors import ConfigError, InputError, Problem, invalid_choice
from ptflow.files import creatable_dir_problem, named_errors, partial_file, write_atomic
from ptflow.spec import call, export_example, flatten_outputs
from ptflow.stage import Environment, RunContext, register_stage
from ptflow.targets import resolve_path

FORMATS = ("pt2",)
CHUNK = 1 << 22   # bytes per write: a signal or a full disk is noticed between chunks


@dataclass(frozen=True)
class ExportConfig:
    format: str = "pt2"
    dir: str | None = None        # null: <run dir>/export
    name: str = "model"           # file stem: <name>.pt2
    strict: bool = False          # torch.export strict (TorchDynamo) tracing
    verify: bool = True           # reload the file and compare it with the in-memory model
    verify_atol: float = 1e-4     # largest abs difference the reloaded file may show

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise invalid_choice("format", self.format, FORMATS)
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError.single("name", self.name, "a plain file stem such as 'model'")
        if not self.verify_atol >= 0:   # also rejects NaN
            raise ConfigError.single("verify_atol", self.verify_atol, "a tolerance >= 0, e.g. 1e-4",
                                     "set export.verify=false to skip the check instead")


@register_stage("export", config=ExportConfig)
class ExportStage:
    """torch.export to .pt2 (dynamic batch), reload and check it, write manifest.json."""

    requires = frozenset()
    provides = frozenset({"export"})

    def __init__(self, config: ExportConfig):
        self.config = config

    def consumes(self) -> frozenset[Form]:
        # an EXPORTED model (a loaded .pt2 program) re-exports; TorchScript cannot be torch.export'ed
        return frozenset({Form.EAGER, Form.QUANTIZED, Form.COMPILED, Form.EXPORTED})

    def refusal(self, given: Form) -> str | None:
        if given is Form.SCRIPTED:
            return (f"export.format={self.config.format} needs torch.export, which cannot trace a TorchScript "
                    "module: drop 'export' from the pipeline, or load the model from a state_dict or a "
                    ".pt2 program")
        if given is Form.PACKED:
            return (f"export.format={self.config.format} needs torch.export, which cannot trace torch.ao's "
                    "packed quantized layers: drop 'export', or pick a torchao quantize recipe")
        return None

    def produces(self, given: Form | None) -> Form:
        return Form.EXPORTED

    def preflight(self, env: Environment) -> list[Problem]:
        if not self.config.dir:
            return []
        reason = creatable_dir_problem(resolve_path(self.config.dir))
        if reason:
            return [Problem("export.dir", self.config.dir, "a directory ptflow can create and write",
                            f"{reason}; pick another export.dir, or null for <run dir>/export")]
        return []

    def run(self, artifact: Artifact, ctx: RunContext) -> Artifact:
        out_dir = resolve_path(self.config.dir) if self.config.dir else ctx.run_dir / "export"
        out_dir.mkdir(parents=True, exist_ok=True)
        example = artifact.example.inputs
        started = time.perf_counter()
        with torch.inference_mode():
            _register_output_types(call(artifact.module, example))
        traced, shapes = export_example(artifact.inputs, example)
        program = torch.export.export(artifact.module, traced.args, dict(traced.kwargs),
                                      dynamic_shapes=shapes, strict=self.config.strict)
        target = out_dir / f"{self.config.name}.pt2"
        manifest_path = out_dir / "manifest.json"
        partial_name = out_dir / f".{target.stem}.partial-{os.getpid()}{target.suffix}"  # torch wants .pt2
        with partial_file(partial_name) as partial:
            _save_program(program, partial, _expected_mb(artifact))
            export_s = time.perf_counter() - started
            reloaded = torch.export.load(partial).module() if self.config.verify else program.module()
            error = self._verify(artifact, reloaded) if self.config.verify else float("nan")
            metrics = {"export.export_s": export_s, "export.size_mb": partial.stat().st_size / 1e6,
                       "export.reload_max_abs_error": error}
            manifest = _manifest(self.config, artifact, ctx, target, partial,
                                 {**artifact.metrics, **metrics})
            # Complete and checked: it may take its final name. Until here an earlier export in
            # this dir stayed intact; from here its manifest must not vouch for the new file.
            manifest_path.unlink(missing_ok=True)
            os.replace(partial, target)
        try:
            write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
        except BaseException:
            target.unlink(missing_ok=True)   # no manifest, no file: never leave it looking complete
            raise
        return artifact.evolve(model=reloaded, module=reloaded, form=Form.EXPORTED).with_metrics(
            metrics).with_files({"export.pt2": target, "export.manifest": manifest_path})

    def _verify(self, artifact: Artifact, reloaded: Any) -> float:
        """Max abs difference, reloaded file vs in-memory module, on every eval batch."""
        worst = 0.0
        with torch.inference_mode():
            checks = [b.inputs for b in artifact.batches]
            if artifact.inputs.tensors[0].dynamic_dims():
                checks.append(artifact.example.inputs.map(lambda t: t[:1]))  # a different batch size
            for inputs in checks:
                expected = flatten_outputs(call(artifact.module, inputs))
                got = flatten_outputs(call(reloaded, inputs))
                for (_, a), (_, b) in zip(expected, got):
                    worst = max(worst, float((a.float() - b.float()).abs().max()))
        if worst > self.config.verify_atol:
            raise InputError(f"the reloaded {self.config.format} file differs from the model by {worst:.3g} "
                             f"(export.verify_atol={self.config.verify_atol}); the export is not faithful")
        return worst


def _register_output_types(value: object) -> None:
    """torch.export needs dataclass outputs registered as pytree nodes (Hugging Face's
    ModelOutput does this itself); register any plain dataclass the model returns."""
    import dataclasses

    from torch.utils import _pytree

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value) not in _pytree.SUPPORTED_NODES:
            cls = type(value)
            torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return
    for child in children:
        _register_output_types(child)


def _expected_mb(artifact: Artifact) -> float:
    m = artifact.metrics
    return next((m[k] for k in ("quantize.size_mb", "load.size_mb") if k in m), 0.0)


def _save_program(program: Any, path: Path, expected_mb: float) -> None:
    """torch.export.save, made safe on a full disk.

    torch's zip writer aborts the whole process (std::terminate in its destructor) when
    a write fails, so the program is serialised into memory first and written with
    Python I/O, whose failure is an ordinary OSError. Free space is checked first, so a
    disk that is already too full fails at once, naming the path."""
    free_mb = shutil.disk_usage(path.parent).free / 1e6
    if expected_mb and free_mb < expected_mb * 1.1:
        raise OSError(errno.ENOSPC, f"{free_mb:.1f} MB free, the export needs about {expected_mb:.1f} MB",
                      str(path))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    view = buffer.getbuffer()
    with named_errors(path), path.open("wb") as handle:
        for start in range(0, len(view), CHUNK):
            handle.write(view[start:start + CHUNK])
    del view


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("torchao", "ptflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _manifest(config: ExportConfig, artifact: Artifact, ctx: RunContext, target: Path, written: Path,
              metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "format": config.format,
        "file": target.name,
        "sha256": _sha256(written),
        "size_bytes": written.stat().st_size,
        "source_form": artifact.form.value,
        "inputs": artifact.inputs.describe(),
        "outputs": [path for path, _ in artifact.baseline.outputs[0]] if artifact.baseline else None,
        "config_hash": ctx.config_hash,
        "lineage": [{"stage": r.name, "config": r.config} for r in artifact.lineage],
        "versions": _versions(),
        "device": ctx.settings,
        "metrics": {k: v for k, v in sorted(metrics.items()) if not k.endswith("duration_s")},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
