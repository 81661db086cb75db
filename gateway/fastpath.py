"""GatewayApp: a FastAPI app whose hot routes skip the framework's per-request machinery.

The OpenAI proxy routes are pure ASGI apps. FastAPI would pass every request through its middleware stack
(error middleware, exception middleware, exit stack, router matching), each wrapping `send` again; for a proxy
whose whole job is a few microseconds of work per message that is most of the cost. POSTs to a fast route go
straight to the handler (behind the same API-key check); everything else is ordinary FastAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway.asgi import ASGIApp, Receive, Scope, Send
from gateway.auth import APIKeyMiddleware


class GatewayApp(FastAPI):
    def __init__(self, *, api_keys: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api_keys = api_keys
        self._fast: dict[str, ASGIApp] = {}
        if api_keys:
            self.add_middleware(APIKeyMiddleware, keys=api_keys)

    def add_fast_route(self, path: str, handler: ASGIApp) -> None:
        """Serve POST `path` with `handler` directly; it must answer every error itself."""
        self._fast[path] = APIKeyMiddleware(handler, self._api_keys) if self._api_keys else handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._fast.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
