"""The served model as KServe sees it: a ``kserve.Model`` whose ``predict`` checks the request
(``requests``), queues it on the batcher and answers with the model's outputs; the data
plane whose readiness is the model's; and the status each refusal maps to.

==========================  ==================  ============================
refusal                      HTTP                gRPC
==========================  ==================  ============================
bad request (``BadRequest``)  400                 INVALID_ARGUMENT
queue full                   503                 RESOURCE_EXHAUSTED
shutting down / not ready    503                 UNAVAILABLE
deadline passed in queue     504                 DEADLINE_EXCEEDED
the model raised             500                 INTERNAL
==========================  ==================  ============================

Imports ``kserve``: imported only by ``server`` once the command line is parsed.
"""
from __future__ import annotations

import contextvars
import logging
import time
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ptflow.serve.batcher import Batcher, Expired, ModelFailed, QueueFull, ShuttingDown
from ptflow.serve.loaded import TensorSpec
from ptflow.serve.requests import BadRequest, check

log = logging.getLogger("ptflow.serve")
# the gRPC deadline of the call being handled (monotonic seconds), set by the servicer
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("ptflow_deadline", default=None)


class PtflowModel(Model):
    """One served export. ``ready`` turns true once the file passed its example check."""

    def __init__(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], batch_dynamic: bool, *,
                 max_batch_size: int, timeout_s: float, allow_nonfinite: bool,
                 labels: dict[str, list[Any]] | None = None) -> None:
        super().__init__(name)
        self.inputs, self.outputs, self.batch_dynamic = inputs, outputs, batch_dynamic
        self.max_batch_size = max_batch_size if batch_dynamic else 1
        self.timeout_s = timeout_s
        self.allow_nonfinite = allow_nonfinite
        self.labels = labels or {}
        self.batcher: Batcher | None = None
        self.ready = False
        self.enable_latency_logging = False

    def load(self) -> bool:      # loaded by ptflow before ready; KServe's hook has nothing to do
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return [spec.metadata() for spec in self.inputs]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [spec.metadata() for spec in self.outputs]

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        if not self.ready or self.batcher is None:
            raise ModelNotReady(self.name, "it is loading, checking its example, or shutting down")
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected an Open Inference Protocol (v2) request: POST /v2/models/"
                               f"{self.name}/infer or gRPC ModelInfer")
        try:
            checked = check(payload.inputs, payload.parameters, payload.request_outputs, self.inputs, self.outputs,
                            self.batch_dynamic, self.max_batch_size, self.allow_nonfinite, self.labels)
        except BadRequest as error:
            raise InvalidInput(str(error)) from None
        now = time.monotonic()
        limits = [now + self.timeout_s, DEADLINE.get()]
        if checked.timeout_s is not None:
            limits.append(now + checked.timeout_s)
        deadline = min(d for d in limits if d is not None)
        arrays = await self.batcher.submit(checked.arrays, checked.rows, deadline)
        binary = bool(payload.use_binary_outputs)
        outputs = []
        for spec, array in zip(self.outputs, arrays):
            if checked.outputs is not None and spec.name not in checked.outputs:
                continue
            array = array.astype(spec.dtype, copy=False)
            out = InferOutput(name=spec.name, shape=list(array.shape), datatype=spec.datatype)
            out.set_data_from_numpy(array, binary_data=binary)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                             from_grpc=payload.from_grpc, use_binary_outputs=binary)


class PtflowDataPlane(DataPlane):
    """KServe's data plane, whose server readiness is every model's (KServe's own answers
    True whatever the models say)."""

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all(getattr(m, "ready", False) for m in models)


def http_status(error: BaseException) -> int:
    return {QueueFull: 503, ShuttingDown: 503, Expired: 504, ModelFailed: 500}.get(type(error), 500)


def grpc_status(error: BaseException) -> Any:
    from grpc import StatusCode

    return {QueueFull: StatusCode.RESOURCE_EXHAUSTED, ShuttingDown: StatusCode.UNAVAILABLE,
            Expired: StatusCode.DEADLINE_EXCEEDED, ModelFailed: StatusCode.INTERNAL}.get(type(error))


REFUSALS = (QueueFull, ShuttingDown, Expired, ModelFailed)
