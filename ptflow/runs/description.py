"""What a run says about itself on the MLflow run page and in the runs table without adding
columns: its description (the ``mlflow.note.content`` tag, rendered as Markdown) and the name
its logged models go by.

The description holds the figures as ptflow shows them (rounded); the metrics keep the raw
values. It is written when the run starts (``running``) and replaced when it ends (``ended``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ptflow.runs import summary as summaries
from ptflow.runs.record import RunRecord

NOTE_TAG = "mlflow.note.content"   # MLflow's run description


def recipe(record: RunRecord) -> str:
    """'int8_static+inductor', or 'as loaded' when no recipe stage ran (the record's tag)."""
    return record.tags.get("recipe") or "as loaded"


def running(record: RunRecord) -> str:
    return f"**{recipe(record)}**: running (pipeline {record.tags.get('pipeline', '?')})"


def ended(record: RunRecord) -> str:
    """'**int8_dynamic+eager** · speedup 2.18x [1.54, 3.21] over 5 processes · top1_accuracy
    -0.0022 (accepted) · timings stable', then the p50s, or how the run ended if it did not finish."""
    head = f"**{recipe(record)}**"
    if record.status != "FINISHED":
        where = f" in stage {record.stage}" if record.stage else ""
        why = record.error or record.reason or ""
        return f"{head}: {record.status}{where}" + (f": {why.splitlines()[0][:300]}" if why else "")
    summary = record.summary or {}
    parts = [head]
    if "speedup_p50" in summary:
        parts.append("speedup " + summaries.speedup_text(summary))
    task = summary.get("task_metric") or {}
    if task.get("delta") is not None:
        verdict = {True: " (accepted)", False: " (REJECTED by the accuracy gate)"}.get(summary.get("accepted"), "")
        parts.append(f"{task['name']} {task['delta']:+.4f}{verdict}")
    state = stability(summary)
    if state:
        parts.append(f"timings {state}")
    lines = [" · ".join(parts)]
    latency = summary.get("latency_ms") or {}
    p50 = {role: latency[role]["p50"] for role in ("baseline", "optimized") if "p50" in latency.get(role, {})}
    if p50:
        lines.append("p50 " + ", ".join(f"{role} {ms:.3f} ms" for role, ms in p50.items()))
    return "\n\n".join(lines)


def stability(summary: Mapping[str, Any]) -> str | None:
    """'stable', 'unstable' or 'invalid' (what the benchmark judged), None when nothing was timed."""
    if summary.get("invalid"):
        return "invalid"
    if summary.get("unstable"):
        return "unstable"
    return "stable" if "unstable" in summary else None


def model_stem(record: RunRecord) -> str | None:
    """The logged models' name before the format: 'int8_static-inductor' (None: the file's stem)."""
    name = record.tags.get("recipe")
    return name.replace("+", "-") if name and name != "as loaded" else None
