"""GatewayApp: a FastAPI app whose hot routes skip the framework's per-request machinery.

The proxy routes are pure ASGI apps. FastAPI would pass every request through its middleware stack (error
middleware, exception middleware, exit stack, router matching), each wrapping `send` again; for a proxy whose
whole job is a few microseconds of work per message that is most of the cost. Two kinds of fast route go straight
to their handler (behind the same API-key check); everything else is ordinary FastAPI:

- exact POST paths (`add_fast_route`): the OpenAI routes, one dict lookup;
- path prefixes (`add_fast_prefix`), any method, optionally narrowed by a predicate on the scope: the V2 routes
  (`/v2...`) and KServe V1's `POST /v1/models/{name}:predict`. Exact routes are looked up first, so prefixes cost
  the OpenAI routes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from gateway.asgi import ASGIApp, Receive, Scope, Send
from gateway.auth import APIKeyMiddleware

Accept = Callable[[Scope], bool]
KeyCheck = Callable[[ASGIApp, list[str]], ASGIApp]  # wraps a handler with the API-key check


class GatewayApp(FastAPI):
    def __init__(self, *, api_keys: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api_keys = api_keys
        self._fast: dict[str, ASGIApp] = {}
        self._prefixes: list[tuple[str, Accept | None, ASGIApp]] = []
        if api_keys:
            self.add_middleware(APIKeyMiddleware, keys=api_keys)

    @property
    def api_keys(self) -> list[str]:
        return self._api_keys

    def add_fast_route(self, path: str, handler: ASGIApp) -> None:
        """Serve POST `path` with `handler` directly; it must answer every error itself."""
        self._fast[path] = APIKeyMiddleware(handler, self._api_keys) if self._api_keys else handler

    def add_fast_prefix(
        self,
        prefix: str,
        handler: ASGIApp,
        *,
        accept: Accept | None = None,
        key_check: KeyCheck = APIKeyMiddleware,
    ) -> None:
        """Serve every HTTP request whose path starts with `prefix` (and that `accept`, if given, takes) with
        `handler` directly, any method; it must answer every error itself. `key_check` wraps it when API keys are
        configured (a handler whose errors use another envelope passes its own)."""
        guarded = key_check(handler, self._api_keys) if self._api_keys else handler
        self._prefixes.append((prefix, accept, guarded))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "POST":
                handler = self._fast.get(scope["path"])
                if handler is not None:
                    await handler(scope, receive, send)
                    return
            if self._prefixes:
                path: str = scope["path"]
                for prefix, accept, handler in self._prefixes:
                    if path.startswith(prefix) and (accept is None or accept(scope)):
                        await handler(scope, receive, send)
                        return
        await super().__call__(scope, receive, send)
