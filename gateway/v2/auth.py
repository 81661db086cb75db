"""API keys on V2 traffic: the gateway's bearer-key rule (gateway/auth.py), with V2's error envelope on REST
and the `authorization` metadata on gRPC (`BearerKeys`)."""

from __future__ import annotations

from gateway.asgi import ASGIApp, Receive, Scope, Send, header
from gateway.auth import BearerKeys
from gateway.v2.errors import send_v2_error
from llmserve.protocol.errors import ServingError


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
