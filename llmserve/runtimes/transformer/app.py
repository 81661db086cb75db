"""The transformer's HTTP interface (pure ASGI), called by the gateway for each request of the service.

  GET  /health                  200 {"status": "ok", "hooks": [...]} once `load()` finished (503 before)
  GET  /v1/hooks                {"hooks": ["preprocess", "postprocess", "postprocess_chunk"]}: what the class
                                implements (the gateway skips the hops for the others)
  POST /v1/hooks/preprocess     body: the client's request (a JSON object) -> the request to send the predictor
  POST /v1/hooks/postprocess    body: the predictor's response -> the response for the client
  POST /v1/hooks/chunks         body: {"chunks": [event, ...]} (the JSON objects of SSE `data:` events received
                                since the last call) -> {"chunks": [event or null, ...]} (one per event, in
                                order; null: the hook dropped it)

Request headers are handed to the hooks (lowercase names), except hop-by-hop ones and credentials; the gateway
adds `x-llmserve-path` (the client's path) and `x-request-id`. Bodies may be gzip or deflate encoded.

Every failure is `{"error": {"message", "type", "param", "code"}}` with its status: a `ClientError` from a hook
-> its 4xx; any other exception -> 500 "<hook> failed: <Type>: <message>"; a hook slower than the timeout ->
504; a body that is not a JSON object -> 400; a hook returning something other than a JSON object -> 500. The
process goes on serving after any of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import orjson

from llmserve.protocol.errors import ServingError
from llmserve.runtimes.asgi import ClientDisconnected, Receive, Scope, Send, read_body, send_bytes
from llmserve.runtimes.transformer.hooks import HOOKS, ClientError, LoadedHandler

log = logging.getLogger("llmserve.transformer")

# Not handed to user code: connection-level headers, and credentials (the gateway strips them too).
HIDDEN_HEADERS = frozenset(
    {
        b"host", b"content-length", b"content-encoding", b"transfer-encoding", b"connection", b"keep-alive",
        b"authorization", b"proxy-authorization", b"cookie", b"x-api-key", b"api-key",
    }
)  # fmt: skip
_JSON = [(b"content-type", b"application/json")]


class TransformerApp:
    def __init__(self, handler: LoadedHandler, *, timeout_s: float, max_body_bytes: int) -> None:
        self.handler = handler
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.loaded = False
        self._hooks_body = orjson.dumps({"hooks": list(handler.hooks)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except ServingError as error:
            await _send_error(send, error)
        except ClientDisconnected:
            return
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await _send_error(send, ServingError(500, "Internal error in the transformer."))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    load = getattr(self.handler.instance, "load", None)
                    if load is not None:
                        await load()
                except Exception as exc:
                    log.exception("the transformer's load() failed")
                    await send({"type": "lifespan.startup.failed", "message": f"load() failed: {exc}"})
                    return
                self.loaded = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/health", "/v1/hooks"):
            _expect(method, "GET", path)
            if path == "/health":
                if not self.loaded:
                    raise ServingError(503, "The transformer is loading.")
                await send_bytes(send, 200, b'{"status":"ok",' + self._hooks_body[1:], _JSON)
            else:
                await send_bytes(send, 200, self._hooks_body, _JSON)
            return
        hook = path.removeprefix("/v1/hooks/")
        if hook == path or hook not in ("preprocess", "postprocess", "chunks"):
            raise ServingError(404, f"Unknown route {method} {path}; hooks: {', '.join(HOOKS)}.", code="not_found")
        _expect(method, "POST", path)
        if not self.loaded:
            raise ServingError(503, "The transformer is loading.")
        body = await read_body(scope, receive, self.max_body_bytes)
        payload = _json_object(body, "The request body")
        headers = _hook_headers(scope)
        if hook == "chunks":
            result: Any = {"chunks": await self._chunks(payload, headers)}
        else:
            result = await self._call(hook, payload, headers)
        await send_bytes(send, 200, _dump(result, hook), _JSON)

    async def _call(self, hook: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        if not self.handler.has(hook):
            return payload  # the gateway skips this hop; answer it the pass-through way all the same
        result = await self._run(hook, getattr(self.handler.instance, hook)(payload, headers))
        if not isinstance(result, dict):
            raise ServingError(500, f"{hook} returned {type(result).__name__}, expected a JSON object (a dict).")
        return result

    async def _chunks(self, payload: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any] | None]:
        chunks = payload.get("chunks")
        if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
            raise ServingError(400, 'The request body must be {"chunks": [JSON object, ...]}.')
        if not self.handler.has("postprocess_chunk"):
            return chunks
        hook = self.handler.instance.postprocess_chunk
        out: list[dict[str, Any] | None] = []
        for chunk in chunks:
            result = await self._run("postprocess_chunk", hook(chunk, headers))
            if result is not None and not isinstance(result, dict):
                raise ServingError(
                    500, f"postprocess_chunk returned {type(result).__name__}, expected a JSON object or None."
                )
            out.append(result)
        return out

    async def _run(self, hook: str, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except ClientError as exc:
            raise ServingError(exc.status, exc.message, code=exc.code or "rejected_by_transformer") from None
        except TimeoutError:
            raise ServingError(
                504, f"{hook} did not finish within {self.timeout_s:g} s.", code="transformer_timeout"
            ) from None
        except Exception as exc:
            log.exception("%s raised", hook)
            raise ServingError(500, f"{hook} failed: {type(exc).__name__}: {exc}", code="transformer_error") from None


def _expect(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise ServingError(405, f"Method {method} is not allowed on {path}.", headers={"allow": allowed})


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServingError(400, f"{what} is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise ServingError(400, f"{what} must be a JSON object.")
    return payload


def _dump(result: Any, hook: str) -> bytes:
    try:
        return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise ServingError(500, f"{hook} returned something that is not JSON: {exc}.") from None


def _hook_headers(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name not in HIDDEN_HEADERS
    }


async def _send_error(send: Send, error: ServingError) -> None:
    headers = [*_JSON, *((k.encode(), v.encode()) for k, v in error.headers.items())]
    await send_bytes(send, error.status, orjson.dumps(error.openai_body()), headers)
