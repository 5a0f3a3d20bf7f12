"""From a resolved export to a model that may report ready.

``build_model`` makes the KServe model from the manifest alone (its metadata answers while
the file loads); ``prepare`` then, off the event loop: picks the format (the one named, or
the fastest loadable one, timed on the example), checks its bytes and loads it, runs the
manifest's example and compares the outputs within the format's tolerance, warms it up,
and only then starts the batcher and turns ready. Every step prints one line saying what
it found; a failure stops the server before it is ever ready.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable

from ptflow.serve.loaded import ExampleCheck, Served, check_example, load, specs
from ptflow.serve.source import Export
from ptflow.serve.verify import DEFAULT_CANDIDATES, Refused, refusal

log = logging.getLogger("ptflow.serve")


def device_of(args: argparse.Namespace, export: Export) -> str:
    if args.device:
        return args.device
    wanted = str((export.manifest.get("device") or {}).get("device") or "cpu")
    if wanted.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return wanted
        log.info("ptflow-serve: the run ran on %s; no CUDA device here, serving on cpu", wanted)
    return "cpu"


def threads_of(args: argparse.Namespace, export: Export) -> int | None:
    if args.threads:
        return args.threads
    value = (export.manifest.get("device") or {}).get("threads")
    return int(value) if isinstance(value, int) and value > 0 else None


def choose(args: argparse.Namespace, export: Export, device: str, threads: int | None) -> tuple[Served, ExampleCheck]:
    """Load and check the named format, or every default candidate (keeping the fastest)."""
    exported = [str(e.get("format")) for e in export.entries()]
    named = args.format or export.format_hint
    if named:
        why = refusal(named, args.trust_native_code)
        if why:
            raise Refused(why)
        served = load(export, named, device, threads)
        result = check_example(served, export)
        _judge(served, result)
        log.info("ptflow-serve: format %s (%s)", named, "named by --format" if args.format else f"registered as {named}")
        return served, result
    tried, notes = [], []
    for fmt in DEFAULT_CANDIDATES:
        if fmt not in exported:
            continue
        why = refusal(fmt, args.trust_native_code)
        if why:
            notes.append(f"{fmt} not tried: native code (--trust-native-code)")
            continue
        try:
            served = load(export, fmt, device, threads)
            result = check_example(served, export)
            _judge(served, result)
        except Refused as error:
            notes.append(f"{fmt} refused: {error}")
            log.warning("ptflow-serve: %s refused: %s", fmt, error)
            continue
        tried.append((result.call_ms, fmt, served, result))
    if "torchscript" in exported:
        notes.append("torchscript not tried: legacy, name it with --format torchscript")
    if not tried:
        raise Refused("no servable export passed its checks (exported: " + (", ".join(exported) or "none") + "; "
                      + "; ".join(notes) + ")")
    tried.sort(key=lambda t: t[0])
    _, fmt, served, result = tried[0]
    timings = ", ".join(f"{f} {ms:.3f} ms" for ms, f, _, _ in tried)
    log.info("ptflow-serve: format %s: the fastest loadable export (median call on the %d-row example: %s)%s",
             fmt, result.rows, timings, "; " + "; ".join(notes) if notes else "")
    return served, result


def _judge(served: Served, result: ExampleCheck) -> None:
    if not result.ok:
        raise Refused(f"the served {served.fmt} file's outputs on the manifest's example differ from the example's "
                      f"by {result.max_abs_error:.3g} (max abs); its tolerance is {result.tolerance:g}: not serving it")


def build_model(args: argparse.Namespace, export: Export) -> tuple[object, Callable[[], Awaitable[None]]]:
    from ptflow.serve.batcher import Batcher
    from ptflow.serve.kserve_model import PtflowModel

    example = export.manifest.get("example") or {}
    inputs, outputs = specs(example.get("inputs") or [], "input"), specs(example.get("outputs") or [], "output")
    if not inputs:
        raise Refused("the manifest describes no inputs (no example entry): re-export with this ptflow")
    batch = all(s.shape and s.shape[0] == -1 for s in inputs) and "batch" in (export.manifest.get("dynamic_dims") or [])
    max_batch = 1 if args.no_batching else args.max_batch_size
    model = PtflowModel(args.name, inputs, outputs, batch, max_batch_size=args.max_batch_size,
                        timeout_s=args.timeout_ms / 1e3, allow_nonfinite=args.allow_nonfinite,
                        labels={str(i.get("name")): list(i.get("shape") or []) for i in export.manifest.get("inputs") or []
                                if isinstance(i, dict)})
    device, threads = device_of(args, export), threads_of(args, export)
    log.info("ptflow-serve: serving %s", export.origin)

    async def prepare() -> None:
        loop = asyncio.get_running_loop()
        served, result = await loop.run_in_executor(None, choose, args, export, device, threads)
        log.info("ptflow-serve: %s sha256 %s… matches the manifest; example: max abs error %.3g within %g; "
                 "warmed up", served.entry["file"], served.entry["sha256"][:12], result.max_abs_error, result.tolerance)
        model.batcher = Batcher(served.run, max_batch_size=max_batch, max_delay_s=args.max_queue_delay_ms / 1e3,
                                max_queue=args.max_queue, batch_dynamic=batch, instances=args.instances)
        model.batcher.start()
        model.served = served
        model.ready = True
        host = f"[{args.host}]" if ":" in args.host else args.host
        batching = (f"batching up to {max_batch} rows, {args.max_queue_delay_ms:g} ms delay" if batch and max_batch > 1
                    else "no batching" + ("" if batch else " (the export has no dynamic batch dim)"))
        log.info("ptflow-serve: ready: model '%s' (%s on %s, %s threads) on http://%s:%d/v2/models/%s and grpc "
                 "%s:%d; %s; queue %d; /health, /metrics", args.name, served.fmt, device, threads or "default",
                 host, args.http_port, args.name, host, args.grpc_port, batching, args.max_queue)
    return model, prepare
