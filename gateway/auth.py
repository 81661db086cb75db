"""Bearer API keys as pure-ASGI middleware (safe on streaming paths); keys are compared in constant time."""

from __future__ import annotations

import hmac

from gateway.asgi import ASGIApp, Receive, Scope, Send, header, send_error
from llmserve.protocol.errors import ServingError

PUBLIC_PATHS = frozenset({"/health", "/ready"})


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, ServingError.unauthorized(), scope["path"])

    def _authorized(self, scope: Scope) -> bool:
        value = header(scope, b"authorization")
        if value is None or value[:7].lower() != b"bearer ":
            return False
        presented = value[7:].strip()
        # Compare with every key, without stopping early: timing says nothing about which key (if any) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched
