"""A fake OpenAI worker whose behaviour per request is a script: the next generation request (POST /v1/...) takes
the next step; with the script used up it answers as FakeWorker does (model-name behaviours included).

    worker = ScriptedWorker("w0", [EngineDead(), Respond(503), Normal()])
    worker.then(DelayHeaders(), StallMidStream(after_chunks=2), Reset())

Steps:
- `Normal()`: FakeWorker's answer.
- `DelayHeaders(seconds=None)`: nothing is sent until `seconds` passed (None: until `release()`), then the normal
  answer; a client that leaves meanwhile is noticed.
- `StallMidStream(after_chunks)`: a 200 SSE stream that sends `after_chunks` chunks, then nothing until `release()`
  (then the rest and [DONE]) or until the client leaves.
- `ErrorMidStream(after_chunks, payload)`: a 200 SSE stream that sends `after_chunks` chunks, then `data: payload`
  (an error event, as vLLM reports a failure after the stream started) and [DONE].
- `Respond(status, body, content_type)`: that response (a 5xx, a 4xx...).
- `EngineDead()`: vLLM's real 500 after its engine died (tests/fixtures/vllm_errors.json).
- `Reset()`: the connection is reset (RST) without a response, after the request was read.
`consumed` lists the steps taken, in order; health and metrics requests never take one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.support.fake_worker import FakeWorker, _chunk, _send

_FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "vllm_errors.json"


@dataclass(frozen=True)
class Normal:
    pass


@dataclass(frozen=True)
class DelayHeaders:
    seconds: float | None = None


@dataclass(frozen=True)
class StallMidStream:
    after_chunks: int = 1
    total_chunks: int = 4


@dataclass(frozen=True)
class ErrorMidStream:
    after_chunks: int = 1
    payload: bytes = b'{"error": {"message": "worker failed", "type": "InternalServerError", "code": 500}}'


@dataclass(frozen=True)
class Respond:
    status: int
    body: bytes = b""
    content_type: bytes = b"application/json"


@dataclass(frozen=True)
class EngineDead:
    pass


@dataclass(frozen=True)
class Reset:
    pass


Step = Normal | DelayHeaders | StallMidStream | ErrorMidStream | Respond | EngineDead | Reset


def engine_dead_body() -> bytes:
    cases = json.loads(_FIXTURE.read_text())["cases"]
    return str(next(c["body"] for c in cases if c["name"] == "engine_dead_chat")).encode()


class ScriptedWorker(FakeWorker):
    def __init__(self, name: str = "scripted", script: Iterable[Step] = ()) -> None:
        super().__init__(name)
        self.script: deque[Step] = deque(script)
        self.consumed: list[Step] = []
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def then(self, *steps: Step) -> ScriptedWorker:
        self.script.extend(steps)
        return self

    def release(self) -> None:
        """Let delayed headers and stalled streams go on (callable from any thread)."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1/")):
            await super().__call__(scope, receive, send)
            return
        if self._release is None:
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body) if body else {}
        self.requests.append(request)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        step: Step = self.script.popleft() if self.script else Normal()
        self.consumed.append(step)
        if isinstance(step, Normal):
            await self.answer(scope, receive, send, request)
        elif isinstance(step, DelayHeaders):
            if await self._wait(receive, step.seconds):
                await self.answer(scope, receive, send, request)
        elif isinstance(step, StallMidStream):
            await self._stall_stream(send, receive, request, scope["path"] == "/v1/chat/completions", step)
        elif isinstance(step, ErrorMidStream):
            await self._error_stream(send, request, scope["path"] == "/v1/chat/completions", step)
        elif isinstance(step, Respond):
            await _send(send, step.status, step.body, step.content_type)
        elif isinstance(step, EngineDead):
            await _send(send, 500, engine_dead_body())
        else:
            _reset_connection(receive)
            await _disconnected(receive)  # uvicorn sees the connection gone, and sends nothing more

    async def _wait(self, receive: Any, seconds: float | None) -> bool:
        """Wait for `seconds` (None: release()); False if the client left first."""
        assert self._release is not None
        released = asyncio.ensure_future(self._release.wait())
        gone = asyncio.ensure_future(_disconnected(receive))
        done, _ = await asyncio.wait({released, gone}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        released.cancel()
        gone.cancel()
        return gone not in done

    async def _error_stream(self, send: Any, request: dict[str, Any], chat: bool, step: ErrorMidStream) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(step.after_chunks):
            frame = b"data: " + orjson.dumps(_chunk(request, chat, i, self.name)) + b"\n\n"
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        tail = b"data: " + step.payload + b"\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _stall_stream(
        self, send: Any, receive: Any, request: dict[str, Any], chat: bool, step: StallMidStream
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        self.active_streams += 1
        try:
            for i in range(step.total_chunks):
                if i == step.after_chunks and not await self._wait(receive, None):
                    self.aborted_streams += 1
                    return
                frame = b"data: " + orjson.dumps(_chunk(request, chat, i, self.name)) + b"\n\n"
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            self.completed_streams += 1
        finally:
            self.active_streams -= 1


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _reset_connection(receive: Any) -> None:
    """RST the request's connection. ASGI has no such message: uvicorn's receive is a bound method of its
    request cycle, which holds the transport (a test fake may lean on that)."""
    transport = receive.__self__.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
