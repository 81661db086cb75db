"""Bearer API keys as pure-ASGI middleware (safe on streaming paths); keys are compared in constant time."""

from __future__ import annotations

import hmac

from gateway.asgi import ASGIApp, Receive, Scope, Send, header, send_error
from llmserve.protocol.errors import ServingError

# /ui and /ui/ are the status page itself, which holds no data (its status and events stay behind the keys).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/ui", "/ui/"})


class BearerKeys:
    """The gateway's key rule, for every protocol: `Authorization: Bearer <one of the keys>`."""

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


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = BearerKeys(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        public = scope["type"] != "http" or scope["path"] in PUBLIC_PATHS
        if public or self.keys.accept(header(scope, b"authorization")):
            await self.app(scope, receive, send)
            return
        await send_error(send, ServingError.unauthorized(), scope["path"])
