"""The status page as a pure-ASGI app: one HTML page (no build step, no third-party front-end code), the status
as JSON, and the status live over Server-Sent Events.

    GET {prefix}          -> 307 to {prefix}/ (the page loads `events` relative to itself)
    GET {prefix}/         -> the page (static; it holds no data)
    GET {prefix}/status   -> the status now, JSON
    GET {prefix}/events   -> text/event-stream: `event: status` with the status as JSON whenever it changed
                             (first at once), `event: unavailable` while the source fails, pings in between

The status comes from an injected `StatusSource` (an async callable returning the status dict, polled every
`interval_s` per open stream); the app never imports the controller. The page renders what it finds of this
shape (GET /admin/v1/services today; unknown keys are ignored, missing ones shown as "-"):

    {"services": [{"name", "model", "runtime", "min_replicas", "max_replicas", "desired_replicas",
                   "ready_replicas", "pull_error",
                   "autoscaler": {"mode", "desired", "reason"} | None,
                   "revisions": [{"name", "traffic_percent", "ready_replicas"}],           (optional)
                   "replicas": [{"id", "state", "url", "pid", "restarts", "last_exit", "revision",
                                 "load": {"in_flight", "waiting", "running", "kv_cache_usage"}}]}],
     "activator": {"<service>": <requests held>},                                            (optional)
     "errors": [{"time" (unix seconds), "service", "status", "message"}],                    (optional, newest first)
     "backend": {"name", "warm_pool": {"size", "processes": [{"state"}]} | None}}

The page reads `events` with fetch() rather than EventSource so that it can send `Authorization: Bearer <key>`
(asked for once on a 401 and kept in the tab's sessionStorage): the page itself holds no data and can be served
without a key, the status cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from gateway.asgi import Receive, Scope, Send, send_bytes, send_error, send_json
from llmserve.protocol.errors import ServingError

StatusSource = Callable[[], Awaitable[dict[str, Any]]]

_PAGE = resources.files("gateway.ui").joinpath("static/index.html").read_bytes()
_HTML = b"text/html; charset=utf-8"
_NO_STORE = [(b"cache-control", b"no-store")]


class UISettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(default="/ui", pattern=r"^(/[A-Za-z0-9._~-]+)*$", description="Path the page is served at.")
    interval_s: float = Field(default=1.0, gt=0, description="How often an open stream reads the status source.")
    ping_s: float = Field(default=15.0, gt=0, description="SSE comment interval, so idle proxies keep the stream.")


class StatusPage:
    """ASGI app for `settings.prefix` and below."""

    def __init__(self, source: StatusSource, settings: UISettings | None = None) -> None:
        self.source = source
        self.settings = settings or UISettings()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        route = path.removeprefix(self.settings.prefix) if path.startswith(self.settings.prefix) else None
        handler = {"": self._redirect, "/": self._page, "/status": self._status, "/events": self._events}.get(
            route if route is not None else "\0"
        )
        if handler is None:
            await send_error(send, ServingError(404, f"Not found: {path}", code="not_found"), path)
            return
        if scope["method"] not in ("GET", "HEAD"):
            error = ServingError(405, f"Method {scope['method']} not allowed on {path}.", headers={"allow": "GET"})
            await send_error(send, error, path)
            return
        await handler(scope, receive, send)

    async def _redirect(self, scope: Scope, receive: Receive, send: Send) -> None:
        location = (scope["path"] + "/").encode()
        await send_bytes(send, 307, b"", content_type=b"text/plain", headers=[(b"location", location)])

    async def _page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, _PAGE, content_type=_HTML, headers=_NO_STORE)

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status = await self.source()
        except Exception as exc:
            error = ServingError(503, f"Status unavailable: {exc}", code="status_unavailable")
            await send_error(send, error, scope["path"])
            return
        await send_json(send, 200, status, headers=_NO_STORE)

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = EventSourceResponse(
            self._changes(), ping=self.settings.ping_s, headers={"cache-control": "no-store"}, send_timeout=30
        )
        await response(scope, receive, send)  # ends when the client disconnects (sse-starlette listens)

    async def _changes(self) -> AsyncIterator[ServerSentEvent]:
        """The status whenever it changed since the last event, checked every interval_s."""
        last: bytes | None = None
        while True:
            try:
                body = orjson.dumps(await self.source(), option=orjson.OPT_SORT_KEYS)
                event = "status"
            except Exception as exc:  # the source is down: say so, keep the stream, try again
                body = orjson.dumps({"message": f"{type(exc).__name__}: {exc}"})
                event = "unavailable"
            if body != last:
                last = body
                yield ServerSentEvent(data=body.decode(), event=event)
            await asyncio.sleep(self.settings.interval_s)


def status_page(source: StatusSource, settings: UISettings | None = None) -> StatusPage:
    """The page and its streams for `source`; mount it at `settings.prefix` (default /ui)."""
    return StatusPage(source, settings)
