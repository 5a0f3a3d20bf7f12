"""KServe's REST and gRPC servers around one ``PtflowModel``, in one process and event loop.

What ptflow sets that KServe's ``ModelServer`` does not let it:

- the address: ``--host`` (127.0.0.1 by default; KServe binds 0.0.0.0 and ``[::]``);
- the request size: a body over ``--max-request-mb`` is refused with 400 naming the limit
  (HTTP: counted as it streams in; gRPC: the message's size, with the transport's own
  limit at twice that);
- ``/health`` for the liveness probe, beside the protocol's ``/v2/health/live|ready``;
- readiness: false until the file passed its example check, false again on SIGTERM;
- the deadline: the gRPC call's own, passed to the batcher;
- the statuses of ptflow's refusals (``kserve_model``), quiet logs (no line per request);
- shutdown: the first SIGTERM/SIGINT turns readiness false, takes no new request, lets the
  queued and running ones finish within ``--grace-s``, stops both servers and exits 0; a
  second signal exits at once (128 + the signal's number).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ptflow.serve.kserve_model import (DEADLINE, REFUSALS, PtflowDataPlane, PtflowModel, grpc_status,
                                       http_status)

log = logging.getLogger("ptflow.serve")


@dataclass
class Endpoint:
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    max_request_bytes: int = 16 << 20
    grpc_threads: int = 4
    grace_s: float = 30.0


def _quiet_kserve(level: int) -> None:
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)


def _body_limit(app: Any, limit: int) -> Any:
    """ASGI middleware: a request body over `limit` bytes is answered 400, as it streams in."""
    import json

    async def middleware(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if (scope.get("method") == "POST" and b"inference-header-content-length" not in headers
                and headers.get(b"content-type", b"").split(b";")[0] in (b"", b"application/x-www-form-urlencoded")):
            # `curl -d '{...}'` sends a form type: a v2 body without the binary extension's header is JSON
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                     + [(b"content-type", b"application/json")]}
        declared = headers.get(b"content-length")
        seen = 0

        async def refuse(size: str) -> None:
            body = json.dumps({"error": f"the request body is {size} bytes; the limit is {limit} "
                                        "(--max-request-mb): send fewer rows per request"}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await refuse(declared.decode())

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(seen)
            return message
        try:
            await app(scope, counted, send)
        except _TooLarge as error:
            await refuse(f"over {error.args[0]}")
    return middleware


class _TooLarge(Exception):
    pass


def _validation(error: Any) -> str:
    """FastAPI's validation errors in words, naming the input (``inputs[0] 'pixels'``) when
    the body parsed far enough to hold one."""
    body = getattr(error, "body", None)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    found = list(getattr(error, "errors", lambda: [])())
    about_inputs = [e for e in found if "inputs" in e.get("loc", ())]
    words = []
    for item in (about_inputs or found)[:3]:
        loc = [p for p in item.get("loc", ()) if p not in ("body", "InferenceRequest")]
        where = ".".join(str(p) for p in loc)
        if len(loc) > 1 and loc[0] == "inputs" and isinstance(loc[1], int) and isinstance(inputs, list) \
                and loc[1] < len(inputs) and isinstance(inputs[loc[1]], dict):
            where = f"input {inputs[loc[1]].get('name')!r} ({where})"
        words.append(f"{where}: {item.get('msg')}")
    return "; ".join(words) or "not an Open Inference Protocol request"


def _rest(dataplane: Any, endpoint: Endpoint, model: PtflowModel) -> Any:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    async def health() -> dict[str, str]:
        return {"status": "alive", "ready": str(model.ready).lower()}

    async def refused(_: Any, error: Exception) -> JSONResponse:
        return JSONResponse(status_code=http_status(error), content={"error": str(error)})

    async def malformed(_: Any, error: Exception) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": f"malformed request body: {_validation(error)}"})

    app.add_api_route("/health", health, methods=["GET"])
    for kind in REFUSALS:
        app.add_exception_handler(kind, refused)
    app.add_exception_handler(RequestValidationError, malformed)   # FastAPI's 422: the protocol says 400
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, dataplane, ModelRepositoryExtension(dataplane.model_registry),
                      endpoint.http_port, grace_period=int(endpoint.grace_s), event_loop="asyncio")
    rest.config.host = endpoint.host
    rest.config.app = _body_limit(app, endpoint.max_request_bytes)
    rest._server.capture_signals = contextlib.nullcontext   # ptflow handles SIGTERM (readiness first)
    rest.create_application()   # KServe's routes and handlers on `app` (start() would add them again)
    return rest


class Malformed:
    """A ModelInfer message that did not parse: answered INVALID_ARGUMENT by the servicer
    (gRPC's own deserializer failure would be UNKNOWN)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
           "RepositoryModelLoad", "RepositoryModelUnload")


def _register(server: Any, servicer: Any) -> None:
    """The protocol's service, as KServe's generated code registers it, but with a ModelInfer
    request parser that turns undecodable bytes into ``Malformed``."""
    import grpc
    from google.protobuf.message import DecodeError
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    def lenient(data: bytes) -> Any:
        try:
            return pb.ModelInferRequest.FromString(data)
        except DecodeError as error:
            return Malformed(str(error))

    handlers = {name: grpc.unary_unary_rpc_method_handler(
        getattr(servicer, name),
        request_deserializer=lenient if name == "ModelInfer" else getattr(pb, f"{name}Request").FromString,
        response_serializer=getattr(pb, f"{name}Response").SerializeToString) for name in METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                                          handlers),))


def _grpc(dataplane: Any, endpoint: Endpoint) -> Any:
    from grpc import StatusCode, aio
    from kserve.errors import InvalidInput
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    class Servicer(InferenceServicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:   # noqa: N802 - the protocol's name
            if isinstance(request, Malformed):
                raise InvalidInput(f"malformed ModelInferRequest (protobuf): {request.reason}")
            size = request.ByteSize()
            if size > endpoint.max_request_bytes:
                raise InvalidInput(f"the request is {size} bytes; the limit is {endpoint.max_request_bytes} "
                                   "(--max-request-mb): send fewer rows per request")
            remaining = context.time_remaining()
            token = DEADLINE.set(time.monotonic() + remaining if remaining is not None else None)
            try:
                return await super().ModelInfer(request, context)
            finally:
                DEADLINE.reset(token)

    class Statuses(ExceptionToStatusInterceptor):
        async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any,
                                   method_name: str) -> None:
            status = grpc_status(ex)
            if status is not None:
                await context.abort(status, str(ex))
            if isinstance(ex, InvalidInput):
                await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
            await super().handle_exception(ex, request_or_iterator, context, method_name)

    from concurrent.futures import ThreadPoolExecutor

    transport = 2 * endpoint.max_request_bytes
    server = aio.server(ThreadPoolExecutor(max_workers=endpoint.grpc_threads), interceptors=(Statuses(),),
                        options=[("grpc.max_receive_message_length", transport),
                                 ("grpc.max_send_message_length", transport)])
    _register(server, Servicer(dataplane, ModelRepositoryExtension(dataplane.model_registry)))
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    if server.add_insecure_port(f"{host}:{endpoint.grpc_port}") == 0:
        raise OSError(f"cannot bind gRPC to {host}:{endpoint.grpc_port} (in use?): pick --grpc-port")
    return server


def _metrics(model: PtflowModel) -> Any:
    """The batcher's figures on /metrics (Prometheus), read when scraped."""
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Any:
            batcher = model.batcher
            stats = batcher.stats if batcher is not None else {}
            yield GaugeMetricFamily("ptflow_serve_ready", "1 once the export passed its example check",
                                    value=float(model.ready))
            yield GaugeMetricFamily("ptflow_serve_queue_depth", "requests waiting for a batch",
                                    value=batcher.queued if batcher is not None else 0)
            for name, key, text in (("requests", "requests", "requests queued"),
                                    ("batches", "batches", "model calls"),
                                    ("batched_rows", "batched_rows", "rows computed"),
                                    ("refused_queue_full", "refused_full", "requests refused: queue full"),
                                    ("expired", "expired", "requests dropped: deadline passed in the queue"),
                                    ("cancelled", "cancelled", "requests dropped: the caller went away")):
                yield CounterMetricFamily(f"ptflow_serve_{name}", text, value=stats.get(key, 0))

    collector = Collector()
    REGISTRY.register(collector)
    return collector


def _unregister(collector: Any) -> None:
    from prometheus_client import REGISTRY

    with contextlib.suppress(KeyError):
        REGISTRY.unregister(collector)


def _bindable(host: str, port: int, option: str) -> None:
    """OSError naming the option when `port` cannot be bound on `host` (in use, no such
    address): said before either server starts, not as uvicorn's or gRPC's traceback."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror}: pick another {option}") from None


async def serve(model: PtflowModel, endpoint: Endpoint, prepare: Callable[[], Awaitable[None]],
                log_level: int = logging.WARNING) -> int:
    """Bind both servers, run `prepare` (load, check, start the batcher; it sets model.ready),
    serve until a signal, drain, stop. Returns the exit code."""
    from kserve.model_repository import ModelRepository

    _quiet_kserve(log_level)
    for port, option in ((endpoint.http_port, "--http-port"), (endpoint.grpc_port, "--grpc-port")):
        _bindable(endpoint.host, port, option)
    registry = ModelRepository()
    registry.update(model)
    metrics = _metrics(model)
    dataplane = PtflowDataPlane(model_registry=registry)
    rest = _rest(dataplane, endpoint, model)
    grpc_server = _grpc(dataplane, endpoint)
    await grpc_server.start()
    rest_task = asyncio.get_running_loop().create_task(rest._server.serve())
    while not rest._server.started:
        if rest_task.done():   # uvicorn could not bind: it logs why and exits
            await grpc_server.stop(0)
            raise OSError(f"cannot serve HTTP on {endpoint.host}:{endpoint.http_port} (in use?): pick --http-port")
        await asyncio.sleep(0.02)
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        if len(signals) > 1:
            log.warning("ptflow-serve: second signal (%s): exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        model.ready = False
        log.warning("ptflow-serve: %s: readiness is false; finishing the requests in flight (grace %.0f s)",
                    signal.Signals(signum).name, endpoint.grace_s)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    code = 0
    try:
        prepared = loop.create_task(prepare())
        await asyncio.wait([prepared, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if prepared.done() and prepared.exception() is not None:
            log.error("ptflow-serve: never ready, exiting 3: %s", prepared.exception())
            code = 3
        elif not stop.is_set():
            await stop.wait()
        if not prepared.done():
            prepared.cancel()
    finally:
        started = time.monotonic()
        left = await model.batcher.drain(endpoint.grace_s) if model.batcher is not None else 0
        if left:
            log.warning("ptflow-serve: %d request(s) did not finish within the grace period", left)
        await grpc_server.stop(max(0.0, endpoint.grace_s - (time.monotonic() - started)))
        rest._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rest_task, endpoint.grace_s + 5)
        if model.batcher is not None:
            model.batcher.close()
        _unregister(metrics)
    log.warning("ptflow-serve: stopped")
    return code
