"""Serving a graph's answer to a client (pure ASGI): whole, or chunk by chunk as its streaming step sends them.

`answer_client` is what a gateway route calls once it has the body and knows the graph; `GraphApp` is a minimal
app around it (KServe's convention: POST /v1/graphs/{name}, any path below it too, runs the graph) used by the
tests and benchmarks. Failures before the answer starts are rendered once: KServe's router body
(`{"error": "Failed to process request", "cause": ...}`) on graph routes, OpenAI's envelope when the graph is
reached as an OpenAI model. After a stream started, a failure is one SSE `data:` frame in OpenAI's envelope, then
`[DONE]` (as the gateway's other streams). A client that disconnects cancels the graph: every step in flight is
cancelled and its upstream exchange aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import orjson

from gateway.asgi import ClientDisconnected, Receive, Scope, Send, read_body, send_bytes
from gateway.drain import Drain, shutting_down
from gateway.graph.interpreter import GraphRouter
from gateway.streaming import DisconnectWatch, Reply
from gateway.tracing import NO_REQUEST_SPAN, NO_TRACING, RequestSpan, RequestTracer, current_graph_span
from llmserve.protocol.errors import ServingError

log = logging.getLogger("llmserve.gateway.graph")
ErrorStyle = Literal["graph", "openai"]
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def render_error(error: ServingError, style: ErrorStyle) -> bytes:
    return orjson.dumps(error.graph_body() if style == "graph" else error.openai_body())


async def answer_client(
    router: GraphRouter,
    body: bytes,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    errors: ErrorStyle = "graph",
    headers: Sequence[tuple[bytes, bytes]] = (),
    drain: Drain | None = None,
    span: RequestSpan = NO_REQUEST_SPAN,
) -> int:
    """Run `router` on `body` (the request body, already read) and send its answer (with `headers` added, e.g. the
    request id); returns the status sent (499 when the client went away first). `drain`: the gateway's graceful
    drain, which may cut the graph at its deadline (gateway/drain.py). `span`: the request's trace, the parent of
    its steps' spans (the caller ends it)."""
    echo = list(headers)
    reply = Reply(send, echo)
    watch = DisconnectWatch(receive)
    watch.start()
    task = drain.track() if drain is not None else None
    traced = current_graph_span.set(span)
    try:
        answer = await router.run(body, list(scope["headers"]))
        if isinstance(answer.body, bytes):
            reply.started = True
            await send_bytes(send, answer.status, answer.body, content_type=_content_type(answer.headers), headers=echo)
            return answer.status
        chunks = answer.body
        try:
            reply.started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": [*answer.headers, *_STREAM_HEADERS, *echo],
                }
            )
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await chunks.aclose()
        return answer.status
    except ServingError as error:
        return await _fail(error, reply, send, errors, echo)
    except asyncio.CancelledError:
        if drain is not None and drain.cut_here(task):
            with contextlib.suppress(Exception):
                return await _fail(shutting_down(), reply, send, errors, echo)
            return 503
        if not watch.gone:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return 499
    except Exception:
        log.exception("graph '%s' failed", router.name)
        with contextlib.suppress(Exception):  # fails if the answer had started: nothing more to say then
            failure = ServingError(500, "internal error in the graph router")
            await send_bytes(send, 500, render_error(failure, errors), headers=echo)
        return 500
    finally:
        current_graph_span.reset(traced)
        if drain is not None:
            drain.untrack(task)
        watch.stop()


async def _fail(
    error: ServingError, reply: Reply, send: Send, errors: ErrorStyle, echo: list[tuple[bytes, bytes]]
) -> int:
    if reply.started:
        await reply.error_frame(error)
    else:
        extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        await send_bytes(send, error.status, render_error(error, errors), headers=[*extra, *echo])
    return error.status


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    return next((v for k, v in headers if k == b"content-type"), b"application/json")


Observe = Callable[[str, int, float], None]  # (graph name or "", status, seconds)


class GraphApp:
    """POST /v1/graphs/{name}[/anything]: run graph `name` on the body (KServe runs a graph on any path of its own
    host; one gateway serves many graphs, so each has its own prefix and any path below it reaches its root).
    `routers` is read at every request (a caller may change it in place); `observe` hears every answer."""

    PREFIX = "/v1/graphs/"

    def __init__(
        self,
        routers: Mapping[str, GraphRouter],
        *,
        max_body_bytes: int = 10 * 1024 * 1024,
        observe: Observe | None = None,
        headers: Callable[[Scope], Sequence[tuple[bytes, bytes]]] | None = None,
        drain: Drain | None = None,
        tracer: RequestTracer = NO_TRACING,
    ) -> None:
        self.routers = routers
        self.tracer = tracer
        self.drain = drain
        self.max_body_bytes = max_body_bytes
        self.observe = observe
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        echo = list(self.headers(scope)) if self.headers is not None else []
        span = self.tracer.request("graph", scope["headers"])
        try:
            name, status = await self._answer(scope, receive, send, echo, span)
        except BaseException as exc:
            span.finish(500, f"{type(exc).__name__}: {exc}")
            raise
        span.finish(status)
        if self.observe is not None:
            self.observe(name, status, time.perf_counter() - started)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, echo: list[tuple[bytes, bytes]], span: RequestSpan
    ) -> tuple[str, int]:
        path: str = scope["path"]
        name = path.removeprefix(self.PREFIX).split("/", 1)[0] if path.startswith(self.PREFIX) else ""
        router = self.routers.get(name)
        if router is not None:
            span.resolved(model=name, service=name)
        if router is None:
            error = ServingError(404, f"no InferenceGraph named '{name}'" if name else f"no route {path}")
            await send_bytes(send, 404, render_error(error, "graph"), headers=echo)
            return "", 404
        if scope["method"] != "POST":
            error = ServingError(405, "graphs take POST")
            await send_bytes(send, 405, render_error(error, "graph"), headers=[(b"allow", b"POST"), *echo])
            return name, 405
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
        except ServingError as error:
            await send_bytes(send, error.status, render_error(error, "graph"), headers=echo)
            return name, error.status
        except ClientDisconnected:
            return name, 499
        return name, await answer_client(router, body, scope, receive, send, headers=echo, drain=self.drain, span=span)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
