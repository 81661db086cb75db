"""API keys on V2 traffic: the gateway's bearer-key rule (gateway/auth.py), with V2's error envelope on REST
and the `authorization` metadata on gRPC. Keys are compared in constant time, against every key."""

from __future__ import annotations

import hmac

from gateway.asgi import ASGIApp, Receive, Scope, Send, header
from gateway.v2.errors import send_v2_error
from llmserve.protocol.errors import ServingError


class BearerKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def accept(self, authorization: bytes | None) -> bool:
        """Whether an `Authorization` value carries one of the keys (`Bearer <key>`)."""
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return False
        presented = authorization[7:].strip()
        matched = False
        for key in self._keys:  # no early exit: timing says nothing about which key (if any) matched
            matched |= hmac.compare_digest(presented, key)
        return matched


class V2KeyCheck:
    """Pure-ASGI key check in front of a V2 handler: 401 `{"error": ...}` without a valid key."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = BearerKeys(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys.accept(header(scope, b"authorization")):
            await self.app(scope, receive, send)
        else:
            await send_v2_error(send, ServingError.unauthorized())
