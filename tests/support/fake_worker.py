"""A fake OpenAI worker (the vLLM HTTP contract, minus the model) for gateway tests.

Behaviour is chosen per request by the `model` field:
- "boom-500": plain-text 500;  "reset": the connection is closed before any response;
- "engine-dead": vLLM's answer once its engine core died (500, EngineDeadError in OpenAI's envelope);
- "break-stream": a stream that is cut after two chunks; "no-embeddings": /v1/embeddings is not served (404);
any other name: a normal answer.
`max_tokens` sets how many stream chunks are sent and `x_delay_ms` (an extra body field) the pause between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson


class FakeWorker:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.active_streams = 0
        self.aborted_streams = 0
        self.completed_streams = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/health":
            await _send(send, 200, b"")
            return
        if path == "/metrics":
            text = f'vllm:num_requests_running{{model_name="{self.name}"}} {float(self.active_streams)}\n'
            await _send(send, 200, text.encode(), b"text/plain")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append(request)
        self.headers.append(headers)
        await self.answer(scope, receive, send, request)

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any, request: dict[str, Any]) -> None:
        """The normal answer to a generation request whose body has been read (`request`)."""
        path = scope["path"]
        model = request.get("model")
        if model == "reset":
            raise RuntimeError("fake worker drops this connection")
        if model == "engine-dead":
            body = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                              "type": "InternalServerError", "param": None, "code": 500}}  # fmt: skip
            await _send(send, 500, orjson.dumps(body))
            return
        if model == "boom-500":
            await _send(send, 500, b"Internal Server Error", b"text/plain")
            return
        if path == "/v1/embeddings" and model == "no-embeddings":
            await _send(send, 404, b'{"detail":"Not Found"}')
            return
        if path == "/v1/embeddings":
            await _send(send, 200, orjson.dumps(_embedding(request)))
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            await _send(send, 404, b'{"detail":"Not Found"}')
            return
        chat = path == "/v1/chat/completions"
        if request.get("stream"):
            delay = float(request.get("x_delay_ms", 0)) / 1000
            await self._stream(send, receive, request, chat, delay, model == "break-stream")
        else:
            await _send(send, 200, orjson.dumps(_completion(request, chat, self.name)))

    async def _stream(
        self, send: Any, receive: Any, request: dict[str, Any], chat: bool, delay: float, broken: bool
    ) -> None:
        n = int(request.get("max_tokens") or 4)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        self.active_streams += 1
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            for i in range(n):
                if disconnected.is_set():
                    self.aborted_streams += 1
                    return
                if broken and i == 2:
                    raise RuntimeError("fake worker breaks the stream")
                chunk = _chunk(request, chat, i, self.name)
                await send(
                    {"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True}
                )
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), delay)
            tail = b""
            if (request.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": request["model"],
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n},
                }
                tail = b"data: " + orjson.dumps(usage) + b"\n\n"
            await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
            self.completed_streams += 1
        finally:
            watcher.cancel()
            self.active_streams -= 1


async def _send(send: Any, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _completion(request: dict[str, Any], chat: bool, worker: str) -> dict[str, Any]:
    n = int(request.get("n") or 1)
    text = f"hello from {worker}"
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ]
        obj = "chat.completion"
    else:
        choices = [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None} for i in range(n)]
        obj = "text_completion"
    return {
        "id": "cmpl-fake",
        "object": obj,
        "created": int(time.time()),
        "model": request["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def _chunk(request: dict[str, Any], chat: bool, i: int, worker: str) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"content": f"t{i} "} if i else {"role": "assistant", "content": ""}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": f"t{i} ", "logprobs": None, "finish_reason": None}
        obj = "text_completion"
    return {
        "id": "cmpl-fake",
        "object": obj,
        "created": int(time.time()),
        "model": request["model"],
        "choices": [choice],
        "system_fingerprint": worker,
    }


def _embedding(request: dict[str, Any]) -> dict[str, Any]:
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
    return {"object": "list", "data": data, "model": request["model"], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
