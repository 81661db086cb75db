"""A streamed worker response as a step's chunks: it ends once, aborting the exchange, however it ends."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.graph.http_caller import UpstreamChunks, step_answer
from gateway.upstream import UpstreamError, UpstreamResponse
from llmserve.protocol.errors import ServingError


class StubResponse:
    def __init__(self, chunks: list[bytes | Exception], headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.chunks = chunks
        self.status = 200
        self.headers = headers or [(b"content-type", b"text/event-stream")]
        self.aborted = 0

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    async def next_chunk(self) -> bytes | None:
        if not self.chunks:
            return None
        item = self.chunks.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def read(self) -> bytes:
        return b"".join(c for c in self.chunks if isinstance(c, bytes))

    def abort(self) -> None:
        self.aborted += 1


def stream(stub: StubResponse, ended: list[int]) -> UpstreamChunks:
    return UpstreamChunks(cast(UpstreamResponse, stub), "step", lambda: ended.append(1))


async def test_closing_before_any_chunk_aborts_the_exchange() -> None:
    stub, ended = StubResponse([b"a", b"b"]), []
    await stream(stub, ended).aclose()
    assert (stub.aborted, ended) == (1, [1])


async def test_reading_to_the_end_ends_once() -> None:
    stub, ended = StubResponse([b"a", b"b"]), []
    chunks = stream(stub, ended)
    assert [c async for c in chunks] == [b"a", b"b"]
    await chunks.aclose()
    assert ended == [1]


async def test_a_failure_mid_stream_is_a_502_and_ends_the_stream() -> None:
    stub, ended = StubResponse([b"a", UpstreamError("the worker closed the connection")]), []
    chunks = stream(stub, ended)
    assert await anext(chunks) == b"a"
    with pytest.raises(ServingError, match="step: the worker closed") as info:
        await anext(chunks)
    assert (info.value.status, ended) == (502, [1])


@pytest.mark.parametrize(
    ("stream_wanted", "headers", "streamed"),
    [
        (True, [(b"content-type", b"text/event-stream")], True),
        (False, [(b"content-type", b"text/event-stream")], False),
        (True, [(b"content-type", b"text/event-stream"), (b"content-length", b"2")], False),
        (True, [(b"content-type", b"application/json")], False),
    ],
)
async def test_only_a_wanted_sse_stream_comes_back_as_chunks(
    stream_wanted: bool, headers: list[tuple[bytes, bytes]], streamed: bool
) -> None:
    ended: list[Any] = []
    answer = await step_answer(
        cast(UpstreamResponse, StubResponse([b"{}"], headers)), "s", stream_wanted, lambda: ended.append(1)
    )
    assert answer.streamed is streamed
    assert await answer.read() == b"{}"
    assert ended == [1]
