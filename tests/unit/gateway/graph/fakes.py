"""A fake step caller for the interpreter's unit tests: each target answers what a handler says; calls recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.graph.steps import Headers, StepAnswer, StepTarget
from llmserve.spec.graph import InferenceGraph

Handler = Callable[[bytes], Awaitable[StepAnswer]]


def graph(nodes: dict[str, Any], **spec: Any) -> InferenceGraph:
    return InferenceGraph.model_validate(
        {
            "apiVersion": "serving.llmserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": "g"},
            "spec": {"nodes": nodes, **spec},
        }
    )


def answer(payload: Any, status: int = 200) -> StepAnswer:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return StepAnswer(status, [(b"content-type", b"application/json")], body)


def replies(payload: Any, status: int = 200) -> Handler:
    async def handle(body: bytes) -> StepAnswer:
        return answer(payload, status)

    return handle


def echo(tag: str) -> Handler:
    """Answers {"tag": tag, "got": <the JSON it was sent>}."""

    async def handle(body: bytes) -> StepAnswer:
        return answer({"tag": tag, "got": orjson.loads(body)})

    return handle


@dataclass
class Call:
    target: StepTarget
    body: bytes
    headers: Headers
    stream: bool


@dataclass
class FakeCaller:
    handlers: dict[str, Handler]
    calls: list[Call] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def __call__(self, target: StepTarget, body: bytes, headers: Headers, stream: bool) -> StepAnswer:
        name = target.service_name or target.service_url or ""
        self.calls.append(Call(target, body, headers, stream))
        try:
            return await self.handlers[name](body)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise

    def sent_to(self, name: str) -> list[Any]:
        return [orjson.loads(c.body) for c in self.calls if name in (c.target.service_name, c.target.service_url)]


@dataclass
class GatedStream:
    """An SSE answer whose chunks the test releases one by one; records whether it was closed early."""

    chunks: list[bytes]
    released: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    produced: int = 0
    closed: bool = False

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.released.put_nowait(None)

    async def generate(self) -> AsyncGenerator[bytes, None]:
        try:
            for chunk in self.chunks:
                await self.released.get()
                self.produced += 1
                yield chunk
        finally:
            self.closed = self.produced < len(self.chunks)

    def handler(self) -> Handler:
        async def handle(body: bytes) -> StepAnswer:
            return StepAnswer(200, [(b"content-type", b"text/event-stream")], self.generate())

        return handle


async def never(body: bytes) -> StepAnswer:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
