"""Relaying a worker's response to the client: whole bodies at once, streams chunk by chunk as they arrive.

Nothing is buffered or re-framed: each piece the worker sends is handed to the client as soon as it is read. If
the worker breaks mid-stream, the client gets one SSE `data:` frame in OpenAI's error envelope and the end.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import orjson

from gateway.asgi import Receive, Send
from gateway.upstream import UpstreamError, UpstreamResponse
from llmserve.protocol.errors import ServingError

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EVENT_STREAM = b"text/event-stream"
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


@dataclass(slots=True)
class RelayStats:
    status: int
    first_chunk_at: float | None = None
    frames: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def find_usage(data: bytes, stats: RelayStats) -> None:
    prompt = _PROMPT_TOKENS.search(data)
    completion = _COMPLETION_TOKENS.search(data)
    if prompt is not None:
        stats.prompt_tokens = int(prompt.group(1))
    if completion is not None:
        stats.completion_tokens = int(completion.group(1))


async def relay(response: UpstreamResponse, send: Send, headers: list[tuple[bytes, bytes]]) -> RelayStats:
    """Send `response` to the client; the caller has already dealt with error statuses it wants to rewrite."""
    content_type = response.header(b"content-type") or b"application/json"
    if response.header(b"content-length") is not None or not content_type.startswith(_EVENT_STREAM):
        return await _relay_whole(response, send, content_type, headers)
    return await _relay_stream(response, send, content_type, headers)


async def _relay_whole(
    response: UpstreamResponse, send: Send, content_type: bytes, headers: list[tuple[bytes, bytes]]
) -> RelayStats:
    try:
        body = await response.read()
    except UpstreamError as exc:
        raise ServingError.upstream_failure(str(exc)) from None
    stats = RelayStats(status=response.status)
    if response.status == 200:
        find_usage(body[-1024:], stats)
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return stats


async def _relay_stream(
    response: UpstreamResponse, send: Send, content_type: bytes, headers: list[tuple[bytes, bytes]]
) -> RelayStats:
    stats = RelayStats(status=response.status)
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(b"content-type", content_type), *_STREAM_HEADERS, *headers],
        }
    )
    try:
        while (chunk := await response.next_chunk()) is not None:
            if stats.first_chunk_at is None:
                stats.first_chunk_at = time.perf_counter()
            stats.frames += chunk.count(b"data: ")
            if b'"prompt_tokens"' in chunk:
                find_usage(chunk, stats)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        # Headers are gone already: report the failure in-band, the way vLLM reports its own stream errors.
        stats.status = 502
        error = ServingError.upstream_failure(str(exc))
        frame = b"data: " + orjson.dumps(error.openai_body()) + b"\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return stats


class DisconnectWatch:
    """Cancels the task serving a request when its client disconnects before the response is finished.

    The request body must have been read already: from then on, the next ASGI message is the disconnect. Watching
    costs a task, so it begins only after `grace_s`: most requests are answered before that and never pay for it,
    and a disconnect that happened earlier is seen as soon as the watch begins.
    """

    __slots__ = ("_finished", "_owner", "_receive", "_task", "_timer", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._owner: asyncio.Task[object] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False
        self.gone = False

    def start(self, grace_s: float = 0.05) -> None:
        self._owner = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(grace_s, self._begin)

    def _begin(self) -> None:
        self._timer = None
        if not self._finished:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._finished and self._owner is not None:
                    self.gone = True
                    self._owner.cancel()
                return
