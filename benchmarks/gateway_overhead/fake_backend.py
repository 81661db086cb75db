"""A fast fake OpenAI backend (raw ASGI + uvicorn/httptools/uvloop + orjson) for measuring proxies.

POST /v1/chat/completions: a fixed ~400-byte chat completion, or with "stream": true, 32 SSE chunks sent as 32
separate writes, then [DONE]. GET /health and /v1/models for proxies that probe their workers.

With `--chunk-gap-ms LOW-HIGH` the chunks are spaced like a model's tokens: a gap drawn uniformly from [LOW, HIGH]
ms (seeded) before each, and every chunk carries `"x_sent_ns"`, the backend's CLOCK_MONOTONIC when it was written,
so a client on the same machine can tell how long each chunk took to reach it (through a proxy or not).

    python benchmarks/gateway_overhead/fake_backend.py --port 9000 [--chunk-gap-ms 5-20 --seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import orjson
import uvicorn

CHUNKS = 32


def _completion() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The capital of France is Paris."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
        }
    )


def _chunk(i: int) -> bytes:
    delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" tok{i}"}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


COMPLETION = _completion()
STREAM = [_chunk(i) for i in range(CHUNKS)]
MODELS = orjson.dumps({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})
JSON_HEADERS = [(b"content-type", b"application/json")]
GAPS: tuple[float, float] | None = None  # seconds between stream chunks (set by --chunk-gap-ms)
RNG = random.Random(0)


def _timed_chunk(i: int) -> bytes:
    delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" tok{i}"}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        "x_sent_ns": time.monotonic_ns(),
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] in ("/health", "/v1/models"):
        payload = MODELS if scope["path"] == "/v1/models" else b"{}"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return
    if b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if GAPS is not None:
            for i in range(CHUNKS):
                await asyncio.sleep(RNG.uniform(*GAPS))
                await send({"type": "http.response.body", "body": _timed_chunk(i), "more_body": True})
        for chunk in STREAM if GAPS is None else ():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(COMPLETION)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": COMPLETION})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunk-gap-ms", default=None, help="LOW-HIGH: space stream chunks (e.g. 5-20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    global GAPS
    if args.chunk_gap_ms:
        low, high = (float(x) / 1000 for x in args.chunk_gap_ms.split("-"))
        GAPS = (low, high)
    RNG.seed(args.seed)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
