"""Adaptive batching: concurrent requests for one model are merged into one predict call and split back.

A request joins the model's queue; one drain task takes queued requests (whole requests, at most
`max_batch_size` rows together), groups those that can be stacked (same input names, datatypes and trailing
dimensions, same requested outputs), concatenates each group along the first axis, runs the model once and
hands every caller its own rows.

With `max_latency_s == 0` nothing ever waits: the drain task runs after the requests that arrived in the same
event-loop turn have queued, so batches form exactly when requests overlap (under load) and a lone request is
not delayed. With `max_latency_s > 0` a batch that is not full waits up to that long (from its first request's
arrival) for more. If a merged call fails, or the model's outputs do not have one row per input row, the
group's requests are run one by one, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmserve.protocol.v2 import InferTensor

Runner = Callable[[Sequence[InferTensor], Sequence[str]], Awaitable[list[InferTensor]]]
BatchObserver = Callable[[int, int], None]  # (rows, requests) of each predict call


@dataclass(slots=True)
class _Pending:
    inputs: Sequence[InferTensor]
    outputs: tuple[str, ...]
    rows: int
    key: tuple[Any, ...]
    arrived: float
    future: asyncio.Future[list[InferTensor]]


def batch_rows(inputs: Sequence[InferTensor]) -> int | None:
    """The batch size shared by all inputs (their first dimension), or None when they have none in common."""
    rows: int | None = None
    for tensor in inputs:
        shape = tensor.data.shape
        if not shape or (rows is not None and shape[0] != rows):
            return None
        rows = shape[0]
    return rows


class AdaptiveBatcher:
    def __init__(
        self,
        run: Runner,
        *,
        max_batch_size: int,
        max_latency_s: float = 0.0,
        observe: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._observe = observe or (lambda rows, requests: None)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._drainer: asyncio.Task[None] | None = None
        self._arrival = asyncio.Event()

    async def submit(self, inputs: Sequence[InferTensor], outputs: Sequence[str]) -> list[InferTensor]:
        rows = batch_rows(inputs)
        if rows is None or self.max_batch_size <= 1 or rows >= self.max_batch_size:
            self._observe(rows or 1, 1)
            return await self._run(inputs, outputs)
        loop = asyncio.get_running_loop()
        key = (tuple((t.name, t.datatype, t.data.dtype.str, t.data.shape[1:]) for t in inputs), tuple(outputs))
        pending = _Pending(inputs, tuple(outputs), rows, key, time.monotonic(), loop.create_future())
        self._queue.append(pending)
        self._queued_rows += rows
        self._arrival.set()
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self.max_latency_s > 0:
                    await self._wait_for_more()
                for group in self._groups(self._take()):
                    await self._run_group(group)
        finally:
            self._drainer = None

    async def _wait_for_more(self) -> None:
        deadline = self._queue[0].arrived + self.max_latency_s
        while self._queued_rows < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
            item = self._queue.popleft()
            rows += item.rows
            batch.append(item)
        self._queued_rows -= rows
        return batch

    @staticmethod
    def _groups(batch: list[_Pending]) -> list[list[_Pending]]:
        groups: dict[tuple[Any, ...], list[_Pending]] = {}
        for item in batch:
            groups.setdefault(item.key, []).append(item)
        return list(groups.values())

    async def _run_group(self, group: list[_Pending]) -> None:
        live = [item for item in group if not item.future.done()]  # callers that gave up are dropped
        if len(live) <= 1:
            for item in live:
                await self._run_one(item)
            return
        merged = [
            InferTensor(first.name, first.datatype, [], np.concatenate([item.inputs[i].data for item in live]))
            for i, first in enumerate(live[0].inputs)
        ]
        for tensor in merged:
            tensor.shape = list(tensor.data.shape)
        rows = [item.rows for item in live]
        try:
            self._observe(sum(rows), len(live))
            outputs = await self._run(merged, live[0].outputs)
            parts = _split(outputs, rows)
        except Exception:
            parts = None
        if parts is None:
            for item in live:
                await self._run_one(item)
            return
        for item, part in zip(live, parts, strict=True):
            if not item.future.done():
                item.future.set_result(part)

    async def _run_one(self, item: _Pending) -> None:
        try:
            self._observe(item.rows, 1)
            result = await self._run(item.inputs, item.outputs)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)


def _split(outputs: list[InferTensor], rows: list[int]) -> list[list[InferTensor]] | None:
    total = sum(rows)
    if any(not t.data.shape or t.data.shape[0] != total for t in outputs):
        return None
    parts: list[list[InferTensor]] = []
    start = 0
    for count in rows:
        end = start + count
        parts.append([InferTensor(t.name, t.datatype, [count, *t.shape[1:]], t.data[start:end]) for t in outputs])
        start = end
    return parts
