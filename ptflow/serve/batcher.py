"""Dynamic batching: requests queued together are stacked along the batch dim, run as one
call on a worker thread, and split back.

- A batch takes queued requests of one *shape key* (every dim but the batch, and the
  dtypes), oldest first, up to ``max_batch_size`` rows. Requests of other shapes wait for a
  later batch: a dynamic non-batch dim (a sequence length) is never padded, since an
  export does not say which value pads a dim without changing the answer.
- When a worker is free, a batch waits (up to ``max_delay_s`` after its oldest request
  arrived) until the queue holds as many rows as the largest of the last 8 batches:
  concurrent clients, who sent as many requests before, fill a full batch, and a lone
  client (one request per answer) never waits. With a delay of 0 a batch goes at once, and requests
  batch only while the worker is busy.
- The queue is bounded: a request that finds ``max_queue`` requests waiting is refused at
  once (``QueueFull``: HTTP 503 / RESOURCE_EXHAUSTED), never left to an unbounded backlog.
- A request whose deadline passed while it waited is dropped from its batch, not computed
  (``Expired``); a request whose caller went away (cancelled) is dropped too.
- If a batched call fails, each request of it is run alone, so one bad request fails alone.
- ``drain`` (shutdown) refuses new requests and waits for the queued and running ones.

Model calls run on a ``ThreadPoolExecutor`` of ``instances`` threads, off the event loop.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Run = Callable[[list[np.ndarray]], list[np.ndarray]]


class QueueFull(Exception):
    """The queue holds max_queue requests: the request is refused at once."""


class Expired(Exception):
    """The request's deadline passed before its batch ran: it was not computed."""


class ShuttingDown(Exception):
    """The server is stopping: it takes no new request."""


class ModelFailed(Exception):
    """The model raised on this request (run alone)."""


@dataclass
class _Item:
    arrays: list[np.ndarray]
    rows: int
    key: tuple
    deadline: float | None
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, run: Run, *, max_batch_size: int, max_delay_s: float, max_queue: int,
                 batch_dynamic: bool, instances: int = 1) -> None:
        self.run = run
        self.max_batch_size = max_batch_size if batch_dynamic else 1
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.batch_dynamic = batch_dynamic
        self.instances = instances
        self.executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="ptflow-model")
        self.stats: Counter = Counter()      # batches, batched_rows, requests, expired, cancelled, refused_full
        self._queue: deque[_Item] = deque()
        self._running = 0
        self._recent: deque[int] = deque([1], maxlen=8)   # rows of the last batches: how many to wait for
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False

    # -- the caller's side --------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name="ptflow-batcher")

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return self._running

    async def submit(self, arrays: list[np.ndarray], rows: int, deadline: float | None) -> list[np.ndarray]:
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new request; retry another replica")
        if len(self._queue) >= self.max_queue:
            self.stats["refused_full"] += 1
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting, --max-queue): retry later")
        key = tuple((a.shape[1:] if self.batch_dynamic else a.shape, a.dtype.str) for a in arrays)
        item = _Item(arrays, rows, key, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self.stats["requests"] += 1
        self._wake.set()
        return await item.future

    async def drain(self, grace_s: float) -> int:
        """Take no new request; wait up to `grace_s` for the queued and running ones. Returns
        how many were still unfinished (those get ShuttingDown)."""
        self._closed = True
        end = time.monotonic() + grace_s
        while (self._queue or self._running) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        left = len(self._queue) + self._running
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server stopped before this request ran"))
        return left

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the scheduler ----------------------------------------------------------------
    async def _schedule(self) -> None:
        free = asyncio.Semaphore(self.instances)
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await free.acquire()
            await self._fill()
            batch = self._take()
            if not batch:
                free.release()
                continue
            self._running += len(batch)
            self._recent.append(sum(item.rows for item in batch))
            asyncio.get_running_loop().create_task(self._run(batch, free))

    async def _fill(self) -> None:
        """Wait, up to max_delay_s after the oldest request, until the queue holds as many rows
        as the largest of the last batches (at most max_batch_size): a lone client (whose next request
        comes only after this answer) is never kept waiting, concurrent ones batch fully."""
        while self._queue and self.max_delay_s > 0 and self.max_batch_size > 1:
            first = self._queue[0]
            rows = sum(i.rows for i in self._queue if i.key == first.key)
            left = first.queued_at + self.max_delay_s - time.monotonic()
            if rows >= min(self.max_batch_size, max(self._recent)) or left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Item]:
        now, batch, rows, key, kept = time.monotonic(), [], 0, None, deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():            # the caller went away (a cancelled gRPC call)
                self.stats["cancelled"] += 1
                continue
            if item.deadline is not None and item.deadline <= now:
                self.stats["expired"] += 1
                item.future.set_exception(Expired(f"the deadline passed after {now - item.queued_at:.3f} s in the "
                                                  "queue; the request was not computed"))
                continue
            if key is None:
                key = item.key
            if item.key == key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return batch

    async def _run(self, batch: list[_Item], free: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            if len(batch) == 1:
                await self._run_alone(batch[0], loop)
                return
            arrays = [np.concatenate([item.arrays[i] for item in batch]) for i in range(len(batch[0].arrays))]
            total = sum(item.rows for item in batch)
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, arrays)
            except Exception:   # noqa: BLE001 - one request may be the cause: run each alone
                outputs = None
            if outputs is None or any(o.ndim == 0 or o.shape[0] != total for o in outputs):
                for item in batch:
                    await self._run_alone(item, loop)
                return
            self.stats["batches"] += 1
            self.stats["batched_rows"] += total
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result([o[start:start + item.rows] for o in outputs])
                start += item.rows
        finally:
            self._running -= len(batch)
            free.release()
            if self._queue:
                self._wake.set()

    async def _run_alone(self, item: _Item, loop: asyncio.AbstractEventLoop) -> None:
        arrays = [np.array(a) for a in item.arrays]   # writable copies (torch warns on read-only buffers)
        try:
            outputs = await loop.run_in_executor(self.executor, self.run, arrays)
        except Exception as error:   # noqa: BLE001 - reported to this request's caller
            if not item.future.done():
                item.future.set_exception(ModelFailed(f"the model raised {type(error).__name__}: "
                                                      f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"))
            return
        self.stats["batches"] += 1
        self.stats["batched_rows"] += item.rows
        if not item.future.done():
            item.future.set_result(outputs)
