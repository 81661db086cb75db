"""The retriever over HTTP (pure ASGI):

    POST /v1/models/{name}:predict   {"instances": ["question", ...]} -> {"predictions": [[{id, title, text, score}]]}
                                     an OpenAI chat request (messages) -> the same request, its messages preceded by
                                     a system message with the passages retrieved for the last user message
    GET  /v2/health/live, /v2/health/ready (503 while indexing), /health, /v1/models/{name}

Errors are `{"error": "..."}` (KServe V1 / V2's envelope).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from llmserve.protocol.errors import ServingError
from llmserve.runtimes.retriever.retrieval import Retriever

log = logging.getLogger("llmserve.retriever")
Scope = dict[str, Any]
_JSON = [(b"content-type", b"application/json")]


class RetrieverApp:
    def __init__(self, name: str, retriever: Retriever, *, index_within_s: float, max_body_bytes: int = 1 << 20):
        self.name = name
        self.retriever = retriever
        self.index_within_s = index_within_s
        self.max_body_bytes = max_body_bytes
        self._indexing: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, payload = await self._route(scope, receive)
        except ServingError as error:
            status, payload = error.status, error.v2_body()
        except Exception as exc:  # an embeddings failure, a bug: a clear 500, never a hang
            log.exception("retriever failed")
            status, payload = 500, {"error": f"retriever failed: {exc}"}
        body = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status, "headers": [*_JSON, _length(body)]})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Any) -> tuple[int, Any]:
        path, method = scope["path"], scope["method"]
        if path in ("/health", "/v2/health/live"):
            return 200, {"live": True}
        if path == "/v2/health/ready":
            return (200, {"ready": True}) if self.retriever.ready else (503, {"error": "indexing the documents"})
        model_path = f"/v1/models/{self.name}"
        if path == model_path and method == "GET":
            return 200, {"name": self.name, "ready": self.retriever.ready}
        if path != f"{model_path}:predict":
            raise ServingError(404, f"no route {path} (this retriever serves {model_path}:predict)")
        if method != "POST":
            raise ServingError(405, f"{path} takes POST")
        return 200, await self._predict(await _read_json(receive, self.max_body_bytes))

    async def _predict(self, body: Any) -> Any:
        if isinstance(body, dict) and "messages" in body:
            return await self.retriever.augment(body)
        if isinstance(body, dict) and "instances" in body:
            queries = body["instances"]
            if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
                raise ServingError.bad_request("'instances' must be a non-empty list of question strings")
            top_k = body.get("top_k")
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise ServingError.bad_request("'top_k' must be a positive integer")
            results = await self.retriever.search(queries, top_k)
            return {"predictions": [[hit.as_json() for hit in hits] for hits in results]}
        raise ServingError.bad_request("send {'instances': [questions]} or an OpenAI chat request with 'messages'")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._indexing = asyncio.get_running_loop().create_task(self._index())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._indexing is not None:
                    self._indexing.cancel()
                await self.retriever.embedder.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _index(self) -> None:
        try:
            await self.retriever.build(self.index_within_s)
            log.info("indexed %d passages", len(self.retriever.passages))
        except Exception:
            log.exception("indexing failed: the retriever stays not ready")


async def _read_json(receive: Any, limit: int) -> Any:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ServingError.payload_too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    try:
        return orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as exc:
        raise ServingError.bad_request(f"the body is not JSON: {exc}") from None


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())
