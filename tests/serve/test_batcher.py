"""The dynamic batcher and the request checks, without a server (fast)."""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ptflow.serve.batcher import Batcher, Expired, ModelFailed, QueueFull, ShuttingDown
from ptflow.serve.loaded import TensorSpec
from ptflow.serve.requests import BadRequest, check


class Model:
    """Doubles its input; records each call's batch; can be held busy or made to fail."""

    def __init__(self, hold_s=0.0, fail_on=None):
        self.calls, self.hold_s, self.fail_on = [], hold_s, fail_on

    def __call__(self, arrays):
        self.calls.append(arrays[0].shape[0])
        time.sleep(self.hold_s)
        if self.fail_on is not None and (arrays[0] == self.fail_on).any():
            raise RuntimeError("bad value")
        return [arrays[0] * 2]


def _run(coro):
    return asyncio.run(coro)


def test_requests_queued_while_the_worker_is_busy_are_stacked_and_split_back():
    model = Model(hold_s=0.05)

    async def go():
        batcher = Batcher(model, max_batch_size=8, max_delay_s=0.0, max_queue=64, batch_dynamic=True)
        batcher.start()
        rows = [np.full((1 + i % 2, 3), float(i), np.float32) for i in range(9)]
        first = asyncio.ensure_future(batcher.submit([rows[0]], 1, None))
        await asyncio.sleep(0.01)   # the worker is busy with the first: the others queue up
        results = [await first] + await asyncio.gather(*(batcher.submit([r], r.shape[0], None) for r in rows[1:]))
        batcher.close()
        return rows, results
    rows, results = _run(go())
    for sent, (got,) in zip(rows, results):
        assert np.array_equal(got, sent * 2)
    assert model.calls[0] == 1 and max(model.calls) > 1 and all(c <= 8 for c in model.calls)
    assert sum(model.calls) == sum(r.shape[0] for r in rows)


def test_different_shapes_never_share_a_batch_and_a_delay_fills_one():
    model = Model()

    async def go():
        batcher = Batcher(model, max_batch_size=16, max_delay_s=0.05, max_queue=64, batch_dynamic=True)
        batcher.start()
        short = [np.ones((1, 4), np.float32) for _ in range(3)]
        long = [np.ones((1, 5), np.float32) for _ in range(2)]
        await asyncio.gather(*(batcher.submit([a], 1, None) for a in short + long))
        batcher.close()
    _run(go())
    assert sorted(model.calls) == [2, 3]


def test_a_full_queue_refuses_at_once_and_expired_requests_are_not_computed():
    gate = threading.Event()

    def blocked(arrays):
        gate.wait(5)
        return [arrays[0]]

    async def go():
        batcher = Batcher(blocked, max_batch_size=1, max_delay_s=0.0, max_queue=2, batch_dynamic=True)
        batcher.start()
        one = np.ones((1, 2), np.float32)
        running = asyncio.ensure_future(batcher.submit([one], 1, None))
        await asyncio.sleep(0.05)                      # the worker holds it
        late = asyncio.ensure_future(batcher.submit([one], 1, time.monotonic() + 0.01))
        kept = asyncio.ensure_future(batcher.submit([one], 1, None))
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.submit([one], 1, None)
        refused_in = time.monotonic() - started
        await asyncio.sleep(0.05)
        gate.set()
        await running
        with pytest.raises(Expired, match="not computed"):
            await late
        await kept
        stats = dict(batcher.stats)
        batcher.close()
        return refused_in, stats
    refused_in, stats = _run(go())
    assert refused_in < 1.0
    assert stats["refused_full"] == 1 and stats["expired"] == 1 and stats["batches"] == 2


def test_a_failing_request_fails_alone_and_drain_refuses_new_ones():
    model = Model(hold_s=0.02, fail_on=-1.0)

    async def go():
        batcher = Batcher(model, max_batch_size=8, max_delay_s=0.0, max_queue=64, batch_dynamic=True)
        batcher.start()
        good = [np.ones((1, 2), np.float32) for _ in range(4)]
        bad = np.full((1, 2), -1.0, np.float32)
        results = await asyncio.gather(*(batcher.submit([a], 1, None) for a in good + [bad]),
                                       return_exceptions=True)
        left = await batcher.drain(1.0)
        with pytest.raises(ShuttingDown):
            await batcher.submit([good[0]], 1, None)
        batcher.close()
        return results, left
    results, left = _run(go())
    assert all(isinstance(r, list) for r in results[:4])
    assert isinstance(results[4], ModelFailed) and "bad value" in str(results[4])
    assert left == 0


SPECS = [TensorSpec("rows", "FP32", "float32", (-1, -1, 8)), TensorSpec("mask", "FP32", "float32", (-1, -1))]
LABELS = {"rows": ["batch", "tokens", 8], "mask": ["batch", "tokens"]}


def _item(name, array, datatype="FP32"):
    return SimpleNamespace(name=name, datatype=datatype, shape=list(array.shape), as_numpy=lambda: array)


def _check(*items, **kwargs):
    return check(items, kwargs.pop("parameters", None), kwargs.pop("requested", None), SPECS,
                 [TensorSpec("output", "FP32", "float32", (-1, 10))], True, 4, False, LABELS)


@pytest.mark.parametrize("items, words", [
    ((_item("rows", np.ones((1, 3, 8), np.float32)),), ["missing input", "mask (FP32 [-1, -1])"]),
    ((_item("rows", np.ones((1, 3, 8), np.float32)), _item("mask", np.ones((1, 4), np.float32))),
     ["'rows' and 'mask' disagree on dim 'tokens'", "3 and 4"]),
    ((_item("rows", np.ones((2, 3, 8), np.float32)), _item("mask", np.ones((1, 3), np.float32))),
     ["disagree on the batch"]),
    ((_item("rows", np.ones((5, 3, 8), np.float32)), _item("mask", np.ones((5, 3), np.float32))),
     ["batch of 5", "limit per request is 4"]),
    ((_item("rows", np.ones((1, 3, 7), np.float32)), _item("mask", np.ones((1, 3), np.float32))),
     ["'rows'", "[-1, -1, 8]", "dim 2 must be 8"]),
    ((_item("rows", np.ones((1, 3, 8), np.float32)), _item("mask", np.ones((1, 3), np.int64), "INT64")),
     ["'mask'", "INT64", "FP32"]),
])
def test_request_checks_name_the_input_and_what_was_expected(items, words):
    with pytest.raises(BadRequest) as error:
        _check(*items)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_a_good_request_and_its_timeout_parameter():
    checked = _check(_item("rows", np.ones((2, 3, 8), np.float32)), _item("mask", np.ones((2, 3), np.float32)),
                     parameters={"timeout": 2500})
    assert checked.rows == 2 and checked.timeout_s == 0.0025 and len(checked.arrays) == 2
    with pytest.raises(BadRequest, match="timeout"):
        _check(_item("rows", np.ones((1, 3, 8), np.float32)), _item("mask", np.ones((1, 3), np.float32)),
               parameters={"timeout": "soon"})
