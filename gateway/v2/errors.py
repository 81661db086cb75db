"""V2's error envelope, `{"error": "..."}`, on every V2 route (KServe V1 `:predict` / `:explain` included)."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from gateway.asgi import Send, send_bytes
from llmserve.protocol.errors import ServingError


async def send_v2_error(send: Send, error: ServingError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send_bytes(send, error.status, orjson.dumps(error.v2_body()), headers=[*extra, *headers])


def not_found(method: str, path: str) -> ServingError:
    return ServingError(404, f"Unknown request URL: {method} {path}.")


def method_not_allowed(method: str, path: str, allowed: str) -> ServingError:
    return ServingError(405, f"Method {method} is not allowed on {path}; use {allowed}.", headers={"allow": allowed})
