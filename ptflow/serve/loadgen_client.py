"""The load generator: a closed-loop client, written on tritonclient, that drives a server.

Run as ``python -m ptflow.serve.loadgen_client --url HOST:PORT --model NAME --protocol grpc
--inputs one_request.safetensors --concurrency 1,2,4,8 --duration-s 5 --warmup-s 1``.

It lives in its own process, and imports only the standard library, numpy, safetensors and
tritonclient: ``kserve`` and ``tritonclient.grpc`` both register the protobuf package
``inference`` and cannot share a process, and the numbers should come from a client ptflow
did not write (Triton's ``perf_analyzer`` binary is not installable here, so this is the
closest thing: Triton's own client library keeping C requests in flight).

For each concurrency level C, C coroutines on one asyncio event loop (tritonclient's aio
clients; less client overhead on a small machine than C threads) each send a request as soon
as their last one answered. The first ``--warmup-s`` is not recorded; a request is recorded
when it completes inside the next ``--duration-s`` window, with its latency
(``time.perf_counter`` around the call) and outcome. Requests in flight at the window's end
are awaited, not recorded. One line per level goes to stdout::

    PTFLOW-LOAD {"concurrency": 4, "protocol": "grpc", "requests": 812, "errors": 3,
                 "error_codes": {"StatusCode.RESOURCE_EXHAUSTED": 3}, "error_example": "...",
                 "duration_s": 5.0, "throughput_per_s": 162.4, "p50_ms": 24.1,
                 "p95_ms": 31.0, "p99_ms": 40.2, "mean_ms": 24.6}

Notes on tritonclient's aio clients (both marked beta): the HTTP one makes its aiohttp
session in its constructor, so it is built inside the running loop; it has no per-call
timeout (``conn_timeout`` is the session's total per request), and a refused connection or a
timeout comes out as aiohttp's / asyncio's own exception, not InferenceServerException, so
:func:`error_code` names those by type. Without requested outputs it asks for binary outputs
(``binary_data_output``), which the server must support (KServe does).

Exit status 0 when the levels ran (whatever their errors), 2 when the inputs file cannot be
read or the server never became ready.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Callable

import numpy as np

PREFIX = "PTFLOW-LOAD "
EXAMPLE_CHARS = 300


class UsageError(Exception):
    """The run cannot start: unreadable inputs, or a server that never became ready."""


def parse_levels(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; every level a positive integer."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency wants integers separated by commas, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--concurrency wants positive integers, got {text!r}")
    return levels


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """One request's inputs from a safetensors file: tensor name = protocol input name."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(path)
    except Exception as exc:   # missing file, not safetensors, a dtype numpy lacks (bf16)
        raise UsageError(f"cannot read the inputs file {path}: {type(exc).__name__}: {exc}") from None
    if not arrays:
        raise UsageError(f"the inputs file {path} holds no tensors: one per protocol input is needed")
    return arrays


def _protocol(name: str) -> Any:
    """tritonclient's aio module for the protocol (only that one is imported)."""
    if name == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    return module


def build_inputs(module: Any, arrays: dict[str, np.ndarray]) -> list[Any]:
    """The InferInput objects, built once: tritonclient reads them on every call, never writes."""
    from tritonclient.utils import np_to_triton_dtype

    built = []
    for name, array in arrays.items():
        datatype = np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise UsageError(f"input {name!r} has dtype {array.dtype}, which the protocol has no datatype for")
        infer_input = module.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(np.ascontiguousarray(array))
        built.append(infer_input)
    return built


def error_code(exc: BaseException) -> str:
    """A status name: the gRPC code (``StatusCode.RESOURCE_EXHAUSTED``), the HTTP status
    (``503``), or the exception's type for a failure below the protocol (a client timeout)."""
    status = getattr(exc, "status", None)
    if callable(status) and status():
        return str(status())
    if isinstance(exc, asyncio.TimeoutError):
        return "ClientTimeout"
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    """The error's message, cut to EXAMPLE_CHARS (tritonclient's own start with ``[status]``)."""
    status = getattr(exc, "status", None)
    text = str(exc) if callable(status) and status() else f"{type(exc).__name__}: {exc}"
    return text[:EXAMPLE_CHARS]


def summarize(concurrency: int, protocol: str, latencies_s: list[float], codes: dict[str, int],
              example: str | None, window_s: float) -> dict[str, Any]:
    """One level's line: counts, throughput over the window, latency percentiles in ms."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 4) if ms.size else None

    return {
        "concurrency": concurrency, "protocol": protocol, "requests": int(ms.size),
        "errors": sum(codes.values()), "error_codes": dict(sorted(codes.items())),
        "error_example": example, "duration_s": round(window_s, 6),
        "throughput_per_s": round(ms.size / window_s, 4) if window_s > 0 else 0.0,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "mean_ms": round(float(ms.mean()), 4) if ms.size else None,
    }


async def run_level(call: Callable[[], Any], concurrency: int, warmup_s: float,
                    duration_s: float) -> tuple[list[float], dict[str, int], str | None, float]:
    """Keep ``concurrency`` calls in flight through warm-up and window; record the window's."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    example: list[str] = []
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s

    async def worker() -> None:
        while time.perf_counter() < window_end:
            t0 = time.perf_counter()
            try:
                await call()
                failure = None
            except Exception as exc:   # every failure is an outcome to count, not a crash
                failure = exc
            t1 = time.perf_counter()
            if not window_start <= t1 <= window_end:
                continue
            if failure is None:
                latencies.append(t1 - t0)
            else:
                code = error_code(failure)
                codes[code] = codes.get(code, 0) + 1
                if not example:
                    example.append(describe(failure))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, codes, (example[0] if example else None), duration_s


async def wait_ready(client: Any, timeout_s: float) -> None:
    """Poll ``is_server_ready`` until it says yes; UsageError with the last answer if never."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UsageError(f"the server was not ready within {timeout_s:g} s (last answer: {last})")
        try:
            if await asyncio.wait_for(client.is_server_ready(), timeout=min(2.0, left)):
                return
            last = "is_server_ready returned false"
        except Exception as exc:   # refused, unavailable, timed out: the server is not up yet
            last = describe(exc)
        await asyncio.sleep(min(0.25, max(deadline - time.monotonic(), 0)))


async def run(args: argparse.Namespace, arrays: dict[str, np.ndarray]) -> None:
    module = _protocol(args.protocol)
    inputs = build_inputs(module, arrays)
    timeout_us = None if args.timeout_ms is None else int(args.timeout_ms * 1000)
    if args.protocol == "grpc":
        client = module.InferenceServerClient(args.url)

        def call() -> Any:
            return client.infer(args.model, inputs, timeout=timeout_us, client_timeout=args.client_timeout_s)
    else:   # aiohttp's session must be made inside the running loop
        client = module.InferenceServerClient(args.url, conn_limit=max(100, *args.concurrency),
                                              conn_timeout=args.client_timeout_s)

        def call() -> Any:
            return client.infer(args.model, inputs, timeout=timeout_us)
    try:
        try:
            await wait_ready(client, args.ready_timeout_s)
        except UsageError as exc:
            raise UsageError(f"{args.protocol} server at {args.url}: {exc}") from None
        for level in args.concurrency:
            latencies, codes, example, window = await run_level(call, level, args.warmup_s, args.duration_s)
            line = summarize(level, args.protocol, latencies, codes, example, window)
            print(PREFIX + json.dumps(line), flush=True)
    finally:
        await client.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ptflow.serve.loadgen_client",
                                description="Keep C inference requests in flight against an Open Inference "
                                            "Protocol server and print one PTFLOW-LOAD JSON line per level.")
    p.add_argument("--url", required=True, help="HOST:PORT, no scheme")
    p.add_argument("--model", required=True, help="the model name on the server")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--inputs", required=True, help="safetensors file with one request's inputs")
    p.add_argument("--concurrency", type=parse_levels, default=[1], help="levels, e.g. 1,2,4,8")
    p.add_argument("--duration-s", type=float, default=5.0, help="recorded window per level")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unrecorded lead-in per level")
    p.add_argument("--timeout-ms", type=float, default=None,
                   help="the request's 'timeout' parameter for the server (sent in microseconds)")
    p.add_argument("--ready-timeout-s", type=float, default=60.0, help="how long to wait for the server's ready")
    p.add_argument("--client-timeout-s", type=float, default=60.0, help="the client's own limit per request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.duration_s <= 0 or args.warmup_s < 0:
        print("loadgen_client: --duration-s must be > 0 and --warmup-s >= 0", file=sys.stderr)
        return 2
    try:
        arrays = load_inputs(args.inputs)
        asyncio.run(run(args, arrays))
    except UsageError as exc:
        print(f"loadgen_client: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
