"""The end-of-run summary: a JSON record and the compact table shown in the terminal."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptflow.artifact import Artifact
from ptflow.record import RunRecord

RECIPE_GROUPS = ("quantize", "compile")    # each group is applied by the stage of its name


def build(artifact: Artifact, choices: Mapping[str, str], run_dir: Path, wall_s: float,
          record: RunRecord) -> dict[str, Any]:
    m = artifact.metrics
    tracking = record.tracking
    summary: dict[str, Any] = {
        "status": "FINISHED",
        "choices": {k: v for k, v in choices.items() if not k.startswith("hydra")},
        "run_dir": str(run_dir),
        "wall_s": wall_s,
        "stages_s": {r.name: r.duration_s for r in artifact.lineage},
        "latency_ms": {},
        "mlflow": {"run_id": tracking.run_id, "tracking_uri": tracking.uri, "experiment": tracking.experiment},
        "warnings": dict(record.warnings),
        "exports": [str(p) for k, p in artifact.files.items()
                    if k.startswith("export.") and p.suffix != ".json" and k != "export.example"],
    }
    for role, name in (("baseline", "baseline"), ("optimized", "candidate")):
        if f"benchmark.{name}.p50_ms" in m:
            summary["latency_ms"][role] = {q: m[f"benchmark.{name}.{q}_ms"] for q in ("p50", "p90", "p99")}
            if f"benchmark.{name}.dispersion" in m:
                summary.setdefault("dispersion", {})[role] = m[f"benchmark.{name}.dispersion"]
    if "benchmark.unstable" in m:
        summary["unstable"] = bool(m["benchmark.unstable"])
    if "benchmark.speedup_p50" in m:
        summary["speedup_p50"] = m["benchmark.speedup_p50"]
    name = artifact.task_metric
    if name and f"validate.{name}" in m:
        summary["task_metric"] = {"name": name, "baseline": m[f"validate.{name}"],
                                  "optimized": m.get(f"benchmark.{name}"),
                                  "delta": m.get(f"benchmark.{name}_delta")}
    summary["agreement"] = {k: m[f"benchmark.{k}"] for k in ("max_abs_error", "top1_agreement")
                            if f"benchmark.{k}" in m}
    # before and after measured the same way (the tensors the model computes with, as
    # torch.save writes them); the export file's own size is reported next to it
    summary["size_mb"] = {"before": m.get("quantize.size_mb_before", m.get("load.size_mb")),
                          "after": m.get("quantize.size_mb", m.get("load.size_mb")),
                          "export_file": m.get("export.size_mb")}
    if "accuracy.accepted" in m:
        summary["accepted"] = bool(m["accuracy.accepted"])
    if m.get("compile.compile_s"):
        summary["compile_s"] = m["compile.compile_s"]
    return summary


def recipe(summary: Mapping[str, Any]) -> list[str]:
    """The options of the recipe groups whose stage ran: a pipeline without quantize has no
    quantization recipe, whatever `quantize` was set to."""
    choices, ran = summary["choices"], summary["stages_s"]
    return [choices[g] for g in RECIPE_GROUPS if g in choices and g in ran]


def one_line(summary: Mapping[str, Any]) -> str:
    """'int8_dynamic+eager · p50 1.537 ms · 2.18x · top1_accuracy -0.0022' (MLflow tag ptflow.summary)."""
    parts = ["+".join(recipe(summary)) or "as loaded"]
    p50 = summary["latency_ms"].get("optimized", {}).get("p50")
    if p50 is not None:
        parts.append(f"p50 {p50:.3f} ms")
    if "speedup_p50" in summary:
        parts.append(f"{summary['speedup_p50']:.2f}x")
    task = summary.get("task_metric") or {}
    if task.get("delta") is not None:
        parts.append(f"{task['name']} {task['delta']:+.4f}")
    if summary.get("accepted") is False:
        parts.append("REJECTED by the accuracy gate")
    if summary.get("unstable"):
        parts.append("UNSTABLE timings")
    return " · ".join(parts)


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(summary: Mapping[str, Any], mlflow_complete: bool = True) -> str:
    picked = "-".join([summary["choices"].get("model", ""), *recipe(summary)]).strip("-")
    lines = [f"ptflow summary · {picked} · {len(summary['stages_s'])} stages in {summary['wall_s']:.1f} s",
             f"  {'':<20}{'baseline':>12}{'optimized':>12}"]
    latency = summary["latency_ms"]
    for q in ("p50", "p90", "p99"):
        if "optimized" in latency:
            base = latency.get("baseline", {}).get(q)
            extra = f"   speedup {summary['speedup_p50']:.2f}x" if q == "p50" and "speedup_p50" in summary else ""
            lines.append(f"  {'latency ' + q + ' (ms)':<20}{_num(base):>12}{_num(latency['optimized'][q]):>12}{extra}")
    task = summary.get("task_metric")
    if task:
        delta = f"   delta {task['delta']:+.4f}" if task.get("delta") is not None else ""
        if "accepted" in summary:
            delta += "   accepted" if summary["accepted"] else "   REJECTED (accuracy.max_drop)"
        lines.append(f"  {task['name']:<20}{_num(task['baseline'], 4):>12}{_num(task['optimized'], 4):>12}{delta}")
    agreement = summary["agreement"]
    if agreement:
        parts = []
        if "top1_agreement" in agreement:
            parts.append(f"top-1 {agreement['top1_agreement'] * 100:.2f}%")
        parts.append(f"max abs err {agreement['max_abs_error']:.3g}")
        lines.append(f"  {'output agreement':<20}{', '.join(parts)}")
    dispersion = summary.get("dispersion")
    if dispersion:
        spread = ", ".join(f"{role} {value * 100:.1f}%" for role, value in dispersion.items())
        lines.append(f"  {'timing spread':<20}IQR/median {spread}" + ("   UNSTABLE" if summary.get("unstable") else ""))
    size = summary["size_mb"]
    if size["before"] is not None:
        lines.append(f"  {'model size (MB)':<20}{_num(size['before'], 2):>12}{_num(size['after'], 2):>12}")
    if size.get("export_file") is not None:
        lines.append(f"  {'export file (MB)':<20}{'':>12}{size['export_file']:>12.2f}")
    if summary.get("compile_s"):
        lines.append(f"  {'compile time (s)':<20}{'':>12}{summary['compile_s']:>12.2f}")
    for path in summary["exports"]:
        lines.append(f"  {'export':<20}{relative(path)}")
    mlflow = summary["mlflow"]
    if mlflow["run_id"]:
        state = "" if mlflow_complete else "  INCOMPLETE (see below)"
        lines.append(f"  {'MLflow run':<20}{mlflow['run_id']} (experiment '{mlflow['experiment']}'){state}")
        uri = mlflow["tracking_uri"]
        ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
        lines.append(f"  {'open the UI':<20}{ui}")
        for fmt, model in mlflow.get("models", {}).items():
            registered = f"   registered {model['registered'].replace('/', ' version ')}" if model["registered"] else ""
            lines.append(f"  {'MLflow model':<20}{model['uri']} ({fmt}){registered}")
    lines.append(f"  {'run dir':<20}{relative(summary['run_dir'])}")
    for message in summary.get("warnings", {}).values():
        lines.append(f"  warning: {message}")
    return "\n".join(lines)


def relative(path: str) -> str:
    """`path` as the user would type it from where they ran ptflow."""
    from ptflow.targets import origin_cwd

    try:
        return os.path.relpath(path, origin_cwd())
    except ValueError:
        return path
