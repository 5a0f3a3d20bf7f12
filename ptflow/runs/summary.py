"""The end-of-run summary: a JSON record and the compact table shown in the terminal."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptflow.core.artifact import Artifact
from ptflow.runs import ui_links
from ptflow.runs.record import RunRecord

RECIPE_GROUPS = ("quantize", "compile")    # each group is applied by the stage of its name
ROLES = (("baseline", "baseline"), ("optimized", "candidate"))   # (the summary's name, benchmark's)
PERCENTILES = ("p50", "p90", "p95", "p99")


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
        "cache": {k.removeprefix("ptflow.cache."): v for k, v in artifact.tags.items() if k.startswith("ptflow.cache.")},
        "latency_ms": {},
        "mlflow": {"run_id": tracking.run_id, "tracking_uri": tracking.uri, "experiment": tracking.experiment,
                   "experiment_id": tracking.experiment_id},
        "warnings": dict(record.warnings),
        "exports": [str(p) for k, p in artifact.files.items()
                    if k.startswith("export.") and p.suffix != ".json" and k != "export.example"],
    }
    for role, name in ROLES:
        if f"benchmark.{name}.p50_ms" in m:
            summary["latency_ms"][role] = {q: m[f"benchmark.{name}.{q}_ms"] for q in PERCENTILES
                                           if f"benchmark.{name}.{q}_ms" in m}
            unsupported = [q for q in PERCENTILES if m.get(f"benchmark.{name}.{q}_supported") == 0.0]
            if unsupported:   # too few samples for these: the value is close to the largest sample
                summary.setdefault("unsupported", {})[role] = {"n": int(m[f"benchmark.{name}.n"]),
                                                               "percentiles": unsupported}
            if f"benchmark.{name}.cold_ms" in m:
                summary.setdefault("cold_ms", {})[role] = m[f"benchmark.{name}.cold_ms"]
            for key in (f"benchmark.{name}.dispersion_repeats", f"benchmark.{name}.dispersion"):
                if key in m:   # over several processes: the median of theirs (what the verdict judged)
                    summary.setdefault("dispersion", {})[role] = m[key]
                    break
    if "benchmark.unstable" in m:
        summary["unstable"] = bool(m["benchmark.unstable"])
    if "benchmark.invalid" in m:
        summary["invalid"] = bool(m["benchmark.invalid"])
    if "benchmark.speedup_p50" in m:
        summary["speedup_p50"] = m["benchmark.speedup_p50"]
    if "benchmark.speedup_ci_low" in m:
        summary["speedup_ci"] = [m["benchmark.speedup_ci_low"], m["benchmark.speedup_ci_high"]]
        summary["speedup_processes"] = int(m.get("benchmark.repeats", 1))   # what the interval covers
    sizes = sorted({int(k.split(".")[1][2:]) for k in m if k.startswith("benchmark.bs") and k.endswith(".p50_ms")})
    if sizes:
        summary["by_batch_size"] = {size: _size_row(m, f"benchmark.bs{size}") for size in sizes}
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
    if "quantize.coverage.modules" in m:   # a recipe ran ('none' logs a share of 0 and no modules)
        summary["quantized"] = {"weights": m["quantize.coverage.params"], "flops": m.get("quantize.coverage.flops")}
    if "accuracy.accepted" in m:
        summary["accepted"] = bool(m["accuracy.accepted"])
    if m.get("compile.compile_s"):
        summary["compile_s"] = m["compile.compile_s"]
    return summary


def _size_row(m: Mapping[str, float], prefix: str) -> dict[str, Any]:
    """One batch size's p50s and paired speedup (benchmark.batch_sizes)."""
    row: dict[str, Any] = {role: m.get(f"{prefix}.{name}.p50_ms") for role, name in ROLES}
    if f"{prefix}.speedup_p50" in m:
        row.update(speedup_p50=m[f"{prefix}.speedup_p50"],
                   speedup_ci=[m[f"{prefix}.speedup_ci_low"], m[f"{prefix}.speedup_ci_high"]])
    return row


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
        parts.append(speedup_text(summary))
    task = summary.get("task_metric") or {}
    if task.get("delta") is not None:
        parts.append(f"{task['name']} {task['delta']:+.4f}")
    if summary.get("accepted") is False:
        parts.append("REJECTED by the accuracy gate")
    if summary.get("invalid"):
        parts.append("INVALID timings")
    elif summary.get("unstable"):
        parts.append("UNSTABLE timings")
    return " · ".join(parts)


def speedup_text(summary: Mapping[str, Any]) -> str:
    """'2.21x [2.17, 2.25]': the paired speedup and its 95% CI (when measured), and what the
    interval covers: 'over 5 processes', or 'within one process' (the noise between samples of
    one process only: the next process may land outside it)."""
    text = f"{summary['speedup_p50']:.2f}x"
    if summary.get("speedup_ci"):
        low, high = summary["speedup_ci"]
        processes = summary.get("speedup_processes")
        covers = "" if processes is None else " within one process" if processes <= 1 else f" over {processes} processes"
        text += f" [{low:.2f}, {high:.2f}]{covers}"
    return text


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(summary: Mapping[str, Any], mlflow_complete: bool = True) -> str:
    picked = "-".join([summary["choices"].get("model", ""), *recipe(summary)]).strip("-")
    lines = [f"ptflow summary · {picked} · {len(summary['stages_s'])} stages in {summary['wall_s']:.1f} s",
             f"  {'':<20}{'baseline':>12}{'optimized':>12}"]
    latency = summary["latency_ms"]
    unsupported = summary.get("unsupported", {})
    for q in PERCENTILES:
        if q in latency.get("optimized", {}):
            base = latency.get("baseline", {}).get(q)
            extra = f"   speedup {speedup_text(summary)}" if q == "p50" and "speedup_p50" in summary else ""
            short = [f"n={v['n']}" for v in unsupported.values() if q in v["percentiles"]]
            if short:
                extra += f"   ({short[0]}: too few samples for {q}, it is about the largest one)"
            lines.append(f"  {'latency ' + q + ' (ms)':<20}{_num(base):>12}{_num(latency['optimized'][q]):>12}{extra}")
    cold = summary.get("cold_ms")
    if cold and "optimized" in cold:
        lines.append(f"  {'first call (ms)':<20}{_num(cold.get('baseline')):>12}{_num(cold['optimized']):>12}")
    for size, row in (summary.get("by_batch_size") or {}).items():
        speedup = f"   speedup {speedup_text(row)}" if row.get("speedup_p50") is not None else ""
        lines.append(f"  {f'batch {size} p50 (ms)':<20}{_num(row.get('baseline')):>12}{_num(row.get('optimized')):>12}"
                     f"{speedup}")
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
        flag = "   INVALID: not a measurement" if summary.get("invalid") else \
            "   UNSTABLE" if summary.get("unstable") else ""
        processes = summary.get("speedup_processes") or 1
        over = f" (median of {processes} processes)" if processes > 1 else ""
        lines.append(f"  {'timing spread':<20}IQR/median {spread}{over}{flag}")
    size = summary["size_mb"]
    if size["before"] is not None:
        lines.append(f"  {'model size (MB)':<20}{_num(size['before'], 2):>12}{_num(size['after'], 2):>12}")
    quantized = summary.get("quantized")
    if quantized:
        flops = f"   FLOPs {quantized['flops']:.1%}" if quantized.get("flops") is not None else ""
        lines.append(f"  {'weights quantized':<20}{'':>12}{quantized['weights']:>12.1%}{flops}")
    if size.get("export_file") is not None:
        lines.append(f"  {'export file (MB)':<20}{'':>12}{size['export_file']:>12.2f}")
    if summary.get("compile_s"):
        lines.append(f"  {'compile time (s)':<20}{'':>12}{summary['compile_s']:>12.2f}")
    if summary.get("cache"):
        lines.append(f"  {'stage cache':<20}" + ", ".join(f"{k} {v}" for k, v in summary["cache"].items()))
    for path in summary["exports"]:
        lines.append(f"  {'export':<20}{relative(path)}")
    mlflow = summary["mlflow"]
    if mlflow["run_id"]:
        state = "" if mlflow_complete else "  INCOMPLETE (tag ptflow.incomplete; see below)"
        lines.append(f"  {'MLflow run':<20}{mlflow['run_id']} (experiment '{mlflow['experiment']}'){state}")
        uri = mlflow["tracking_uri"]
        ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
        lines.append(f"  {'open the UI':<20}{ui}")
        if mlflow.get("experiment_id"):
            lines.append(f"  {'its page':<20}{ui_links.run_page(uri, mlflow['experiment_id'], mlflow['run_id'])}")
        for fmt, model in mlflow.get("models", {}).items():
            registered = f"   registered {model['registered'].replace('/', ' version ')}" if model["registered"] else ""
            lines.append(f"  {'MLflow model':<20}{model['uri']} ({fmt}){registered}")
    lines.append(f"  {'run dir':<20}{relative(summary['run_dir'])}")
    for message in summary.get("warnings", {}).values():
        lines.append(f"  warning: {message}")
    return "\n".join(lines)


def relative(path: str) -> str:
    """`path` as the user would type it from where they ran ptflow."""
    from ptflow.core.targets import origin_cwd

    try:
        return os.path.relpath(path, origin_cwd())
    except ValueError:
        return path
