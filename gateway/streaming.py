"""Relaying a worker's response to the client: whole bodies at once, streams chunk by chunk as they arrive.

Nothing is re-framed: what the worker sends is handed to the client as soon as it is read, up to its last complete
SSE event (the bytes of an event not yet complete wait for the rest). If the worker breaks mid-stream, the client
gets one SSE `data:` frame in OpenAI's error envelope and the end, never half an event.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.asgi import Receive, Send
from gateway.upstream import UpstreamError, UpstreamResponse
from llmserve.protocol.errors import ServingError

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EVENT_STREAM = b"text/event-stream"
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_MAX_PARTIAL = 1024 * 1024


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


class Reply:
    """The client's side of an exchange: what has been sent so far.

    Before anything is sent, any status can still be chosen. Once SSE keep-alives went out (a request held by the
    activator), the reply is committed to `200 text/event-stream`: what follows must be SSE frames, errors
    included.
    """

    __slots__ = ("headers", "send", "started")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.headers = headers
        self.started = False

    async def start_stream(self) -> None:
        if not self.started:
            self.started = True
            await self.send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        *_STREAM_HEADERS,
                        *self.headers,
                    ],
                }
            )

    async def keepalive(self) -> None:
        await self.start_stream()
        await self.send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})

    async def error_frame(self, error: ServingError) -> None:
        """An error after the stream started: one `data:` frame in OpenAI's envelope, then the end."""
        await self.start_stream()
        frame = b"data: " + orjson.dumps(error.openai_body()) + b"\n\ndata: [DONE]\n\n"
        await self.send({"type": "http.response.body", "body": frame, "more_body": False})


async def relay(
    response: UpstreamResponse,
    reply: Reply,
    on_first_chunk: Callable[[], None] | None = None,
    on_gap: Callable[[float], None] | None = None,
    rewrite_errors: Callable[[bytes], bytes] | None = None,
) -> RelayStats:
    """Send `response` to the client; the caller has already dealt with error statuses it wants to rewrite.
    A stream calls `on_first_chunk` with its first chunk and `on_gap(seconds)` with the time between each two
    chunks it relayed (inter-token latency: vLLM sends about one token per chunk); a chunk that may hold an error
    event the worker sent mid-stream (it names "error") goes through `rewrite_errors` first."""
    content_type = response.header(b"content-type") or b"application/json"
    streamed = response.header(b"content-length") is None and content_type.startswith(_EVENT_STREAM)
    if streamed:
        return await _relay_stream(response, reply, content_type, on_first_chunk, on_gap, rewrite_errors)
    if reply.started:  # committed to SSE, but the worker answered with a whole body: pass it on as one frame
        body = await _read(response)
        await reply.send({"type": "http.response.body", "body": b"data: " + body + b"\n\ndata: [DONE]\n\n"})
        return RelayStats(status=response.status)
    return await _relay_whole(response, reply, content_type)


async def _read(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except UpstreamError as exc:
        raise ServingError.upstream_failure(str(exc)) from None


async def _relay_whole(response: UpstreamResponse, reply: Reply, content_type: bytes) -> RelayStats:
    body = await _read(response)
    stats = RelayStats(status=response.status)
    if response.status == 200:
        find_usage(body[-1024:], stats)
    reply.started = True
    await reply.send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *reply.headers,
            ],
        }
    )
    await reply.send({"type": "http.response.body", "body": body})
    return stats


async def _relay_stream(
    response: UpstreamResponse,
    reply: Reply,
    content_type: bytes,
    on_first_chunk: Callable[[], None] | None,
    on_gap: Callable[[float], None] | None = None,
    rewrite_errors: Callable[[bytes], bytes] | None = None,
) -> RelayStats:
    stats = RelayStats(status=response.status)
    send = reply.send
    if not reply.started:
        reply.started = True
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", content_type), *_STREAM_HEADERS, *reply.headers],
            }
        )
    last = 0.0
    partial = b""  # bytes after the last complete frame: held until the frame is whole
    try:
        while (chunk := await response.next_chunk()) is not None:
            chunk, partial = _whole_frames(partial + chunk if partial else chunk)
            if not chunk:
                continue
            if stats.first_chunk_at is None:
                stats.first_chunk_at = last = time.perf_counter()
                if on_first_chunk is not None:
                    on_first_chunk()
            elif on_gap is not None:
                now = time.perf_counter()
                on_gap(now - last)
                last = now
            stats.frames += chunk.count(b"data: ")
            if rewrite_errors is not None and b'"error"' in chunk:
                chunk = rewrite_errors(chunk)
            if b'"prompt_tokens"' in chunk:
                find_usage(chunk, stats)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        # Headers are gone already: report the failure in-band, the way vLLM reports its own stream errors. A frame
        # the worker had only half sent is dropped, so the error frame is the client's next whole event.
        stats.status = 502
        await reply.error_frame(ServingError.upstream_failure(str(exc)))
        return stats
    await send({"type": "http.response.body", "body": partial, "more_body": False})
    return stats


def _whole_frames(data: bytes) -> tuple[bytes, bytes]:
    """`data` split after its last SSE event boundary (a blank line): (whole events, the rest). A rest that grows
    past _MAX_PARTIAL is passed on as it is (a worker that never ends its events is still relayed)."""
    if data.endswith(b"\n\n"):
        return data, b""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    if len(data) - end > _MAX_PARTIAL:
        return data, b""
    return data[:end], data[end:]


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
