"""Run by ``fresh.py`` as ``python -c <this file's text>`` in a new Python process, working in
the export dir: does the file load with nothing but its manifest's load line, and give the
example's outputs?

It imports torch first, ahead of its job (every torch format's load line imports it anyway, and
it registers nothing a file needs beyond what ``import torch`` gives any user), with the lazy
torch modules named by $PTFLOW_FRESH_WARM (the format's loader imports them first thing:
torch.export.load imports torch._dynamo), holding the lock files named by $PTFLOW_FRESH_LOCKS
meanwhile (``flock``, as ``filelock`` takes them: a benchmark's timed section waits for the
imports, and the imports for it). Then it reads JSON lines from stdin: optionally
``{"imports": [...]}``, the modules the load line imports first (imported at once, in order:
the same imports the load line makes, only earlier), then its job. It imports no ptflow
module (a module ptflow imported would hide what the file needs): it runs the load line, then
the call line on the inputs of ``<name>.example.safetensors``, and prints one JSON line:
``{"ok": true, "max_abs_error": ..., "load_s": ...}`` or
``{"ok": false, "step": "load"|"call"|"compare", "error": "<Type>: <message>"}``.
"""
import importlib
import json
import os
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


def _exit_now(code):
    """The report is out: leave without tearing the interpreter down (torch's finalization
    takes ~0.5-1 s, which the exporting process would wait for); nothing here needs it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _import_early(modules):
    """The load line's imports, made before its job arrives: None, or the first failure (the
    load line would stop there too, so it is reported as the load line's)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as error:  # noqa: BLE001 - reported with the job
            return error
    return None


def _import_torch(locks, owner, warm):
    """import torch and `warm` (torch's own lazy modules, e.g. torch._dynamo: ``import torch``
    declares them part of its namespace, imported on first use, and the format's loader uses
    them before it reads a file), holding every lock file in `locks` (in order) meanwhile."""
    held = []
    try:
        import fcntl
    except ImportError:   # no flock here (Windows): the lock files mean nothing to take
        locks = []
    for path in locks:
        try:
            handle = open(path, "a")
        except OSError:   # an unusable lock dir must not fail the check
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            handle.close()
            continue
        held.append(handle)
        try:   # who holds it, for a benchmark's "waiting for ..." line
            with open(os.path.splitext(path)[0] + ".owner", "w") as note:   # cpu-0.lock -> cpu-0.owner
                note.write(owner + "\n")
        except OSError:
            pass
    try:
        import torch  # noqa: F401
        for name in warm:
            importlib.import_module(name)
    finally:
        for handle in held:
            handle.close()   # closing releases the flock


def _main(job, early_error=None):
    if job.get("dir"):
        os.chdir(job["dir"])   # the load line and the example name their files relative to it
    scope = {}
    started = time.perf_counter()
    if early_error is not None:
        _failed("load", early_error)
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


_import_torch([p for p in os.environ.pop("PTFLOW_FRESH_LOCKS", "").split(os.pathsep) if p],
              os.environ.pop("PTFLOW_FRESH_OWNER", "") or f"fresh-process check (pid {os.getpid()}), importing torch",
              [m for m in os.environ.pop("PTFLOW_FRESH_WARM", "").split(os.pathsep) if m.startswith("torch.")])
_early_error = None
for _line in iter(sys.stdin.readline, ""):   # stdin closed first: the export stopped before the file was written
    if not _line.strip():
        continue
    _message = json.loads(_line)
    if "imports" not in _message:
        try:
            _main(_message, _early_error)
        except SystemExit as stop:
            _exit_now(stop.code if isinstance(stop.code, int) else 1)
        _exit_now(0)
    _early_error = _early_error or _import_early(_message["imports"])
