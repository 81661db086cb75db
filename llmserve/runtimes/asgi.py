"""Small pure-ASGI helpers for the runtime's REST app (the runtime does not import the gateway)."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from llmserve.protocol.errors import ServingError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
_JSON_HEADERS = [(b"content-type", JSON)]


class ClientDisconnected(Exception):
    """The client went away before the body arrived."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body (decompressed if Content-Encoding is gzip or deflate); 413 beyond `limit` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ServingError(400, "Invalid Content-Length header.") from None
        if too_big:
            raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        body = b"".join(parts)
    elif len(body) > limit:
        raise _too_large(limit)
    encoding = header(scope, b"content-encoding")
    if encoding is not None and encoding not in (b"identity", b""):
        body = _decompress(body, encoding, limit)
    return body


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == b"deflate":
        decoder = zlib.decompressobj()
    else:
        raise ServingError(415, f"Unsupported Content-Encoding '{encoding.decode(errors='replace')}'.")
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServingError(400, f"Body is not valid {encoding.decode()} data ({exc}).") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise _too_large(limit)
    return out


def _too_large(limit: int) -> ServingError:
    return ServingError(413, f"Request body is larger than the limit of {limit} bytes.")


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = _JSON_HEADERS
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any) -> None:
    await send_bytes(send, status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))


async def send_error(send: Send, error: ServingError) -> None:
    """The one place the runtime renders an error: V2's envelope {"error": "..."} with its status."""
    headers = [(b"content-type", JSON), *((k.encode(), v.encode()) for k, v in error.headers.items())]
    await send_bytes(send, error.status, orjson.dumps(error.v2_body()), headers)
