"""``ptflow-serve SOURCE``: serve a run's export over the Open Inference Protocol.

  ptflow-serve RUN_ID | RUN_DIR | EXPORT_DIR | models:/NAME/VERSION
               [--format pt2|aoti|onnx|torchscript] [--name NAME] [--host 127.0.0.1]
               [--http-port 8080] [--grpc-port 8081] [--max-batch-size 32] [--max-queue-delay-ms 5]
               [--max-queue 256] [--no-batching] [--timeout-ms 30000] [--max-request-mb 16]
               [--threads N] [--instances 1] [--device cpu|cuda] [--grace-s 30]
               [--allow-nonfinite] [--trust-native-code] [--tracking-uri URI] [--outputs-dir DIR]
               [--loadtest [--levels 1,2,4,8,16,32] [--duration-s 5]] [--package DIR [--image IMAGE]]

Exit codes: 0 served and stopped on a signal (or the load test / package finished); 2 the
source or an option was refused before anything loaded; 3 the file failed its checks
(sha256, archive audit, example outputs) or could not load, so it never became ready.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "ptflow-serve"
log = logging.getLogger("ptflow.serve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve a ptflow export over the Open Inference Protocol "
                                "(KServe's model server: gRPC and HTTP /v2, /health, /metrics).")
    p.add_argument("source", help="an MLflow run id, a run dir, an export dir, or models:/NAME/VERSION")
    p.add_argument("--format", choices=("pt2", "aoti", "onnx", "torchscript"),
                   help="the export to serve (default: the fastest of pt2/onnx — and aoti with "
                        "--trust-native-code — timed on the example at start-up)")
    p.add_argument("--name", default="model", help="the model's name in the protocol's paths (default: model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; --host 0.0.0.0 "
                                                       "serves every interface)")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--max-batch-size", type=int, default=32, help="rows per model call, and per request (default 32)")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0,
                   help="how long a batch may wait, when a worker is free, for as many rows as recent batches "
                        "had (default 5; a lone client never waits; 0: batch only while the worker is busy)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; more are refused "
                                                              "with 503 / RESOURCE_EXHAUSTED (default 256)")
    p.add_argument("--no-batching", action="store_true", help="one request per model call")
    p.add_argument("--timeout-ms", type=float, default=30000.0,
                   help="a request's deadline when neither its gRPC deadline nor its timeout parameter "
                        "is sooner (default 30000)")
    p.add_argument("--max-request-mb", type=float, default=16.0, help="largest request body (default 16 MB)")
    p.add_argument("--threads", type=int, help="torch / onnxruntime threads (default: the run's device setting)")
    p.add_argument("--instances", type=int, default=1, help="model calls running at once (default 1)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: the run's device when present here, else cpu)")
    p.add_argument("--grace-s", type=float, default=30.0, help="time to finish requests after SIGTERM (default 30)")
    p.add_argument("--allow-nonfinite", action="store_true", help="pass NaN/Inf inputs to the model")
    p.add_argument("--trust-native-code", action="store_true",
                   help="allow serving aoti (a compiled shared library runs when it loads)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or None,
                   help="the MLflow store for a run id (default: MLFLOW_TRACKING_URI, else "
                        "sqlite:///<outputs-dir>/mlflow.db)")
    p.add_argument("--outputs-dir", type=Path, default=Path("outputs"))
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="KServe's and uvicorn's log level (default warning: no line per request)")
    p.add_argument("--loadtest", action="store_true",
                   help="start the server (batching on, then off), drive it with tritonclient over --levels, "
                        "print the table and log it to MLflow next to the served run")
    p.add_argument("--levels", default="1,2,4,8,16,32", help="load-test concurrency levels")
    p.add_argument("--duration-s", type=float, default=5.0, help="seconds measured per load-test level")
    p.add_argument("--package", type=Path, metavar="DIR",
                   help="write a container build context and a KServe InferenceService manifest into DIR")
    p.add_argument("--image", default=None, help="with --package: the image name the manifest deploys")
    return p


def _check_options(args: argparse.Namespace) -> str | None:
    for name in ("max_batch_size", "max_queue", "instances"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}"
    for name in ("max_queue_delay_ms", "grace_s"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}"
    for name in ("timeout_ms", "max_request_mb"):
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be > 0; got {getattr(args, name)}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1; got {args.threads}"
    for name in ("http_port", "grpc_port"):
        if not 0 < getattr(args, name) < 65536:
            return f"--{name.replace('_', '-')} must be a port number; got {getattr(args, name)}"
    if args.http_port == args.grpc_port:
        return f"--http-port and --grpc-port are both {args.http_port}: pick two ports"
    return None


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    problem = _check_options(args)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    from ptflow.serve.source import SourceError, resolve
    from ptflow.serve.verify import Refused

    try:
        export = resolve(args.source, args.tracking_uri, args.outputs_dir)
        if args.loadtest:
            from ptflow.serve.loadtest import run_loadtest_command

            return run_loadtest_command(args, export)
        if args.package is not None:
            from ptflow.serve.package_command import run_package_command

            return run_package_command(args, export)
        from ptflow.serve.startup import build_model

        model, prepare = build_model(args, export)
    except (SourceError, Refused) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2 if isinstance(error, SourceError) else 3
    from ptflow.serve.server import Endpoint, serve

    endpoint = Endpoint(args.host, args.http_port, args.grpc_port, int(args.max_request_mb * (1 << 20)),
                        grace_s=args.grace_s)
    level = getattr(logging, args.log_level.upper())
    try:
        return _run_loop(serve(model, endpoint, prepare, level))
    except OSError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2


def _run_loop(main: object) -> int:
    """Run on uvloop where it is installed (KServe installs it; PTFLOW_SERVE_LOOP=asyncio opts out)."""
    if os.environ.get("PTFLOW_SERVE_LOOP", "uvloop") == "uvloop" and sys.version_info >= (3, 11):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def main() -> None:
    argv = sys.argv[1:]
    sys.argv = sys.argv[:1]   # kserve parses sys.argv when imported: it must not see ptflow-serve's options
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
