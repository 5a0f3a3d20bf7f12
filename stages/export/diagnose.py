"""torch.export's failures, said as what to change in the run's config or the model.

torch's message holds the answer, deep inside: ``Suggested fixes: seq = Dim('seq', max=32)``
for a dim the model bounds, ``seq = 24`` for one it fixes, and for a branch on a tensor's
values the source line ("The following call raised this error: File ..., line N"). These
functions pull that out and say it in the run's own terms: the ``data.dynamic_dims`` value
to set, the dim to drop, the line to rewrite with ``torch.cond``.

``trace_check`` traces the eager model once with the run's dynamic dims, right after
validate, so a run that will export (or compile with ``fullgraph``) stops before any
quantize, compile or benchmark work is spent.
"""
from __future__ import annotations

import re
import time
import traceback
from pathlib import Path
from typing import Any

from ptflow.core.errors import InputError
from ptflow.core.spec import BATCH_DIM, InputSpec, ModelInputs, export_example

_FIXES = re.compile(r"Suggested fixes:\n((?:[ \t]+\S.*\n?)+)")
_FIX_LINE = re.compile(r"^\s*(\w+)\s*=\s*(.+?)\s*$")
_DIM = re.compile(r"Dim\(\s*'(\w+)'\s*(?:,\s*(.*))?\)")
_RAISED_AT = re.compile(r'The following call raised this error:\n\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')
_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "DataDependentOutputException")
TORCH_COND = ("rewrite it with torch.cond(pred, true_fn, false_fn, operands), which traces both branches, or "
              "torch.where for an elementwise choice")


def trace_check(module: Any, spec: InputSpec, example: ModelInputs, *, strict: bool, dynamic: bool,
                what: str) -> float:
    """Trace `module` once with torch.export (the spec's dynamic dims when `dynamic`); raise
    InputError with the diagnosis if torch cannot. The seconds it took."""
    import torch

    started = time.perf_counter()
    traced, shapes = export_example(spec, example)
    try:
        torch.export.export(module, tuple(traced.args), dict(traced.kwargs),
                            dynamic_shapes=shapes if dynamic else None, strict=strict)
    except Exception as error:  # noqa: BLE001 - every failure is said in the run's terms
        said = diagnose(error, spec)
        raise InputError(f"{what}: torch.export cannot trace the model, checked right after validate (before "
                         f"any quantize, compile or benchmark work): {said}") from error
    return time.perf_counter() - started


def graph_break_check(module: Any, example: ModelInputs, *, what: str) -> float:
    """What torch.compile(fullgraph=True) would refuse, found with dynamo's explain (no
    compilation): raise InputError naming the first graph break and its source line."""
    import torch

    started = time.perf_counter()
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(module)(*example.args, **example.kwargs)
    finally:
        torch._dynamo.reset()
    if explained.graph_break_count:
        first = explained.break_reasons[0]
        stack = [f for f in (first.user_stack or []) if not f.filename.startswith("<")]
        at = f" at {stack[-1].filename}:{stack[-1].lineno} (`{(stack[-1].line or '').strip()}`)" if stack else ""
        reason = _first_line(str(first.reason))
        branch = any(key in reason.lower() for key in ("generic_jump", "data dependent", "data-dependent"))
        said = f"the model branches on a tensor's values (dynamo: {reason}). To compile it whole, {TORCH_COND}" \
            if branch else reason
        raise InputError(f"{what}: the model has {explained.graph_break_count} graph break(s), checked right after "
                         f"validate; the first{at}: {said}. Or set compile.fullgraph=false (torch.compile then runs "
                         "the breaks in Python between graphs)")
    return time.perf_counter() - started


def diagnose(error: BaseException, spec: InputSpec) -> str:
    """What went wrong and what to do, from a torch.export error."""
    text = str(error)
    fixes = suggested_fixes(text)
    if fixes:
        return _dims_advice(fixes, spec, text)
    if any(key in type(error).__name__ or key in text for key in _DATA_DEPENDENT):
        where = source_line(error)
        at = f" at {where}" if where else ""
        return (f"the model branches on a tensor's values{at}, and torch.export records one path for every input. "
                f"To export it, {TORCH_COND}; or leave pt2, aoti and onnx out of export.formats "
                f"(torch: {_first_line(text)})")
    if "TorchScript interpreter" in _first_line(text):   # the cause is torch's last line, not its first
        cause = _last_error_line(text)
        baked = " (the trace recorded one call's sizes: torch.jit.trace bakes them in)" \
            if re.search(r"shape '\[[\d, -]+\]' is invalid", cause) else ""
        return f"the TorchScript file fails when run: {cause}{baked}"
    where = source_line(error)
    return f"{type(error).__name__}: {_first_line(text)}" + (f" (at {where})" if where else "")


def _last_error_line(text: str) -> str:
    """The last 'SomethingError: ...' line of a message (TorchScript puts the cause last)."""
    lines = [line.strip() for line in text.splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
    return lines[-1] if lines else _first_line(text)


def suggested_fixes(text: str) -> dict[str, str]:
    """torch's 'Suggested fixes:' block: dim name -> what torch suggests (``Dim('seq', max=32)``, ``24``)."""
    found = _FIXES.search(text)
    if not found:
        return {}
    fixes = {}
    for line in found.group(1).splitlines():
        match = _FIX_LINE.match(line)
        if match:
            fixes[match.group(1)] = match.group(2)
    return fixes


def source_line(error: BaseException) -> str | None:
    """'file:line (`code`)' of the user's line torch names, else the last frame outside torch and ptflow."""
    match = _RAISED_AT.search(str(error))
    if match:
        return f"{match.group(1)}:{match.group(2)} (`{match.group(4).strip()}`)"
    import torch

    skip = (str(Path(torch.__file__).resolve().parent), str(Path(__file__).resolve().parents[2]))
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not str(Path(f.filename).resolve()).startswith(skip) and not f.filename.startswith("<")]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno} (`{(frames[-1].line or '').strip()}`)"
    return None


def _dims_advice(fixes: dict[str, str], spec: InputSpec, text: str) -> str:
    labels = {label for t in spec.tensors for label in t.dynamic_dims().values()}
    said, bounds = [], {}
    for name, fix in fixes.items():
        label = name.lstrip("_")
        if label not in labels:
            said.append(f"torch suggests {name} = {fix}")
            continue
        dim = _DIM.match(fix)
        if re.fullmatch(r"\d+", fix):
            said.append(_constant_advice(label, int(fix)))
        elif dim:
            found = dict(re.findall(r"(min|max)\s*=\s*(\d+)", dim.group(2) or ""))
            if label == BATCH_DIM:
                said.append(f"the model takes batches of {_range(found)} only (torch suggests {name} = {fix}); "
                            "set data.dynamic_batch=false to export the eval batch size")
            else:
                bounds[label] = {k: int(v) for k, v in found.items()}
                said.append(f"the model takes {label} of {_range(found)} only (torch suggests {name} = {fix})")
        else:
            said.append(f"torch suggests {name} = {fix}")
    if bounds:
        said.append(f"set '{dynamic_dims_override(spec, bounds)}'")
    return "; ".join(said) or _first_line(text)


def _constant_advice(label: str, size: int) -> str:
    if label == BATCH_DIM:
        return (f"the model fixes the batch size to {size}; set data.dynamic_batch=false (the export then takes "
                f"batches of {size} only)")
    return (f"the model fixes dim '{label}' to {size} (torch: the code specialized it to a constant — nn.LSTM and "
            f"nn.GRU do this for the sequence length): drop '{label}' from data.dynamic_dims, so the export takes "
            f"{label}={size} only, or make that code size-generic")


def _range(found: dict[str, str]) -> str:
    low, high = found.get("min"), found.get("max")
    if low and high:
        return f"{low}..{high}"
    return f"at most {high}" if high else f"at least {low}" if low else "some sizes"


def dynamic_dims_override(spec: InputSpec, bounds: dict[str, dict[str, int]]) -> str:
    """The ``data.dynamic_dims=...`` override of `spec`'s dims with `bounds` (label -> min/max) set."""
    parts, bounded = [], set()
    for tensor in spec.tensors:
        dims = []
        for index, label in tensor.dynamic_dims().items():
            if label == BATCH_DIM:
                continue
            low, high = spec.bounds(label)
            wanted = {**{k: v for k, v in (("min", low), ("max", high)) if v is not None}, **bounds.get(label, {})}
            if wanted and label not in bounded:
                bounded.add(label)
                inner = ", ".join([f"label: {label}"] + [f"{k}: {v}" for k, v in sorted(wanted.items(),
                                                                                          key=lambda kv: kv[0] != "min")])
                dims.append(f"{index}: {{{inner}}}")
            else:
                dims.append(f"{index}: {label}")
        if dims:
            parts.append(f"{tensor.name}: {{{', '.join(dims)}}}")
    return "data.dynamic_dims={" + ", ".join(parts) + "}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
