"""CUDA timing: k calls between two CUDA events, and the throughput feed that overlaps the next
batch's host-to-device copy with compute. Imported when a run times on a GPU; torch is imported
at the top here because these run on the timed path."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptflow.core.spec import ModelInputs, call
from ptflow.measure import protocol as measure


def cuda_events_block(fn: Callable[[], object]) -> measure.BlockRunner:
    """k calls between two CUDA events on the current stream, synchronised at both ends."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(calls: int) -> float:
        torch.cuda.synchronize()
        with measure.gc_paused():
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
        return start.elapsed_time(end) / 1e3

    return run


class CudaFeed:
    """Calls of `model` on batches fed from pinned host memory: each batch is copied into one
    of `inflight` device buffers on a side stream, so the copy of the next batch overlaps the
    compute of the ones before it. A buffer is refilled only after the batch in it computed."""

    def __init__(self, model: Any, inputs: ModelInputs, inflight: int):
        self.model = model
        self.host = [t for _, t in inputs.map(lambda t: t.detach().cpu().pin_memory()).named()]
        self.slots = [inputs.map(torch.empty_like) for _ in range(inflight)]
        self.copy_stream = torch.cuda.Stream()
        self.copied = [torch.cuda.Event() for _ in range(inflight)]
        self.computed = [torch.cuda.Event() for _ in range(inflight)]
        self.next = 0

    def __call__(self) -> object:
        slot, self.next = self.next, (self.next + 1) % len(self.slots)
        compute = torch.cuda.current_stream()
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.computed[slot])   # a no-op before the slot's first use
            for (_, target), source in zip(self.slots[slot].named(), self.host):
                target.copy_(source, non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        compute.wait_event(self.copied[slot])
        result = call(self.model, self.slots[slot])
        self.computed[slot].record(compute)
        return result
