"""Adaptive batching: concurrent callers share predict calls, each gets exactly its own rows; failures and
outputs that cannot be split fall back to one call per request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import InferTensor
from llmserve.runtimes.batching import AdaptiveBatcher


class FakeModel:
    """Doubles its input; records the rows of each call; rejects any row holding -1."""

    def __init__(self, *, scalar_output: bool = False) -> None:
        self.calls: list[int] = []
        self.scalar_output = scalar_output

    async def predict(self, inputs: Sequence[InferTensor], outputs: Sequence[str]) -> list[InferTensor]:
        x = inputs[0].data
        self.calls.append(len(x))
        if (x == -1).any():
            raise ServingError(400, "row with -1")
        if self.scalar_output:
            total = np.array(x.sum())
            return [InferTensor("sum", "FP64", [], total)]
        return [InferTensor(name, "FP64", list(x.shape), x * 2.0) for name in outputs]


def tensor(rows: np.ndarray) -> list[InferTensor]:
    return [InferTensor("x", "FP64", list(rows.shape), rows)]


async def test_concurrent_requests_are_merged_and_split() -> None:
    model = FakeModel()
    batcher = AdaptiveBatcher(model.predict, max_batch_size=64)
    requests = [np.full((1 + i % 3, 2), float(i)) for i in range(20)]
    results = await asyncio.gather(*(batcher.submit(tensor(r), ["y"]) for r in requests))
    for rows, result in zip(requests, results, strict=True):
        assert result[0].shape == list(rows.shape)
        np.testing.assert_array_equal(result[0].data, rows * 2)
    assert len(model.calls) < len(requests)
    assert sum(model.calls) == sum(len(r) for r in requests)


async def test_max_batch_size_is_respected() -> None:
    model = FakeModel()
    batcher = AdaptiveBatcher(model.predict, max_batch_size=5)
    results = await asyncio.gather(*(batcher.submit(tensor(np.full((2, 1), float(i))), ["y"]) for i in range(9)))
    assert max(model.calls) <= 5
    assert [r[0].data[0, 0] for r in results] == [2.0 * i for i in range(9)]
    big = await batcher.submit(tensor(np.ones((7, 1))), ["y"])  # larger than a batch: runs alone
    assert big[0].shape == [7, 1]


async def test_one_bad_request_does_not_fail_its_neighbours() -> None:
    model = FakeModel()
    batcher = AdaptiveBatcher(model.predict, max_batch_size=64)
    rows = [np.full((1, 1), float(i)) for i in range(5)]
    rows[2] = np.full((1, 1), -1.0)
    results = await asyncio.gather(*(batcher.submit(tensor(r), ["y"]) for r in rows), return_exceptions=True)
    assert isinstance(results[2], ServingError)
    for i in (0, 1, 3, 4):
        result = results[i]
        assert not isinstance(result, BaseException)
        assert result[0].data[0, 0] == 2.0 * i


async def test_outputs_without_a_batch_dimension_fall_back_to_single_calls() -> None:
    model = FakeModel(scalar_output=True)
    batcher = AdaptiveBatcher(model.predict, max_batch_size=64)
    results = await asyncio.gather(*(batcher.submit(tensor(np.full((2, 1), float(i))), ["s"]) for i in range(4)))
    assert [float(r[0].data) for r in results] == [2.0 * i for i in range(4)]


async def test_incompatible_requests_are_grouped_apart() -> None:
    model = FakeModel()
    batcher = AdaptiveBatcher(model.predict, max_batch_size=64)
    wide = batcher.submit(tensor(np.ones((1, 3))), ["y"])
    narrow = batcher.submit(tensor(np.ones((1, 2))), ["y"])
    other_output = batcher.submit(tensor(np.ones((1, 2))), ["z"])
    results = await asyncio.gather(wide, narrow, other_output)
    assert [r[0].shape for r in results] == [[1, 3], [1, 2], [1, 2]]
    assert results[2][0].name == "z"
    assert len(model.calls) == 3


async def test_a_lone_request_never_waits_and_latency_budget_gathers_more() -> None:
    model = FakeModel()
    greedy = AdaptiveBatcher(model.predict, max_batch_size=8, max_latency_s=0.0)
    await greedy.submit(tensor(np.ones((1, 1))), ["y"])
    assert model.calls == [1]

    model = FakeModel()
    patient = AdaptiveBatcher(model.predict, max_batch_size=4, max_latency_s=5.0)

    async def staggered(i: int) -> list[InferTensor]:
        await asyncio.sleep(0.001 * i)  # arrivals spread over separate loop turns
        return await patient.submit(tensor(np.full((1, 1), float(i))), ["y"])

    results = await asyncio.wait_for(asyncio.gather(*(staggered(i) for i in range(4))), 2.0)
    assert model.calls == [4]  # filled up before the (long) latency budget ran out
    assert [r[0].data[0, 0] for r in results] == [0.0, 2.0, 4.0, 6.0]


async def test_cancelled_caller_is_skipped() -> None:
    model = FakeModel()
    batcher = AdaptiveBatcher(model.predict, max_batch_size=64, max_latency_s=0.05)
    gone = asyncio.ensure_future(batcher.submit(tensor(np.ones((1, 1))), ["y"]))
    await asyncio.sleep(0)
    gone.cancel()
    kept = await batcher.submit(tensor(np.full((1, 1), 3.0)), ["y"])
    assert kept[0].data[0, 0] == 6.0
    with pytest.raises(asyncio.CancelledError):
        await gone
