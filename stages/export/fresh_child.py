"""Run by ``fresh.py`` as ``python -c <this file's text>`` in a new Python process, in the
export dir: does the file load with nothing but its manifest's load line, and give the
example's outputs?

It imports torch first, while the exporting process is still tracing and writing the file (every
torch format's load line imports it anyway, and it registers nothing a file needs beyond what
``import torch`` gives any user), then reads its job (one JSON line) from stdin. It imports no
ptflow module (a module ptflow imported would hide what the file needs): it runs the load line,
then the call line on the inputs of ``<name>.example.safetensors``, and prints one JSON line: ``{"ok": true, "max_abs_error": ..., "load_s": ...}`` or
``{"ok": false, "step": "load"|"call"|"compare", "error": "<Type>: <message>"}``.
"""
import json
import sys
import time
import traceback


def _report(**fields):
    sys.stdout.write("\nPTFLOW-FRESH " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def _failed(step, error):
    text = "".join(traceback.format_exception_only(type(error), error))
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != ":"]
    message = " ".join(lines[:2]) if lines else type(error).__name__
    if len(message) > 600:
        message = message[:600] + " …"
    where = traceback.extract_tb(error.__traceback__)
    _report(ok=False, step=step, error=message, where=f"{where[-1].filename}:{where[-1].lineno}" if where else None)
    sys.exit(3)


def _main(job):
    scope = {}
    started = time.perf_counter()
    try:
        exec(job["load"], scope)   # the manifest's own line, as a user pastes it
    except BaseException as error:  # noqa: BLE001 - reported, not raised
        _failed("load", error)
    load_s = time.perf_counter() - started
    if job.get("call") is None:   # weights only (safetensors): the file must hold every tensor
        count = len(scope.get("state", {}))
        if count != job["tensors"]:
            _report(ok=False, step="compare", error=f"the file holds {count} tensors; the manifest says {job['tensors']}")
            sys.exit(3)
        _report(ok=True, max_abs_error=0.0, load_s=load_s, outputs=0)
        return
    import torch
    from safetensors.torch import load_file
    from torch.utils._pytree import tree_leaves

    tensors = load_file(job["example"])
    values = [tensors["input." + name].to(job.get("device") or "cpu") for name in job["inputs"]]
    if job["passed_as"] == "keyword":
        scope["args"], scope["kwargs"] = [], dict(zip(job["inputs"], values))
    else:
        scope["args"], scope["kwargs"] = values, {}
    try:
        with torch.inference_mode():
            exec(job["call"], scope)
    except BaseException as error:  # noqa: BLE001
        _failed("call", error)
    got = [torch.as_tensor(leaf) for leaf in tree_leaves(scope.get("out"))
           if isinstance(leaf, torch.Tensor) or hasattr(leaf, "__array__")]
    want = [tensors[name] for name in job["outputs"]]
    if len(got) != len(want):
        _report(ok=False, step="compare", error=f"the loaded file returns {len(got)} output tensor(s); "
                                                f"the example holds {len(want)}")
        sys.exit(3)
    worst = 0.0
    for name, a, b in zip(job["outputs"], want, got):
        if tuple(a.shape) != tuple(b.shape):
            _report(ok=False, step="compare", error=f"{name}: shape {tuple(b.shape)}, the example's is {tuple(a.shape)}")
            sys.exit(3)
        if a.numel():
            worst = max(worst, float((a.float() - b.detach().float().cpu()).abs().max()))
    _report(ok=True, max_abs_error=worst, load_s=load_s, outputs=len(got))


import torch  # noqa: E402,F401 - before the job arrives: see the docstring

_line = sys.stdin.readline()
if _line.strip():   # an empty stdin: the export stopped before this file was written
    _main(json.loads(_line))
