"""The service behind every OpenAI route: validate, resolve the model, pick a replica, forward, relay.

A pure ASGI app (no per-request framework machinery on the hot path). The client's body is forwarded unchanged;
only the fields routing and validation need are parsed (llmserve.protocol.openai). A service with no ready
replica sends its requests through the activator, which holds them until one is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from starlette.routing import Route

from gateway.activator import Activator
from gateway.asgi import ClientDisconnected, Receive, Scope, Send, header, read_body, send_error
from gateway.demand import DemandTracker
from gateway.fastpath import GatewayApp
from gateway.metrics import GatewayMetrics
from gateway.routing import Assignment, RouteContext, Scheduler
from gateway.settings import GatewaySettings
from gateway.streaming import DisconnectWatch, RelayStats, Reply, relay
from gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from llmserve.endpoints import Endpoint, EndpointReader, ServiceInfo
from llmserve.protocol.errors import ServingError
from llmserve.protocol.openai import OpenAIRequest, parse_request

log = logging.getLogger("llmserve.gateway")

UNKNOWN_MODEL = "__unknown__"  # metrics label for requests naming no served model (bounded cardinality)
CLIENT_CLOSED = 499
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def next_request_id() -> bytes:
    """Unique per process start (random prefix) and cheap (a counter): no uuid4 on the hot path."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}".encode()


@dataclass(frozen=True)
class ProxyDeps:
    endpoints: EndpointReader
    scheduler: Scheduler
    pool: UpstreamPool
    metrics: GatewayMetrics
    settings: GatewaySettings
    demand: DemandTracker
    activator: Activator


class OpenAIProxy:
    """ASGI app for one OpenAI route (e.g. POST /v1/chat/completions)."""

    def __init__(self, route: str, path: str, request_model: type[OpenAIRequest], deps: ProxyDeps) -> None:
        self.route = route
        self.path = path.encode()
        self.request_model = request_model
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        deps = self.deps
        request_id = header(scope, b"x-request-id") or next_request_id()
        reply = Reply(send, [(b"x-request-id", request_id)])
        model = UNKNOWN_MODEL
        status = 500
        stats: RelayStats | None = None
        watch = DisconnectWatch(receive)
        counted = False
        try:
            body = await read_body(scope, receive, deps.settings.max_body_bytes)
            request = parse_request(self.request_model, body)
            service = deps.endpoints.resolve_model(request.model)
            if service is None:
                raise ServingError.model_not_found(request.model)
            model = service.model_name
            deps.metrics.request_started(model)
            deps.demand.arrived(service.name)
            counted = True
            watch.start()
            ctx = RouteContext(
                service=service,
                route=self.route,
                request=request,
                body_size=len(body),
                session=_text(header(scope, deps.settings.session_header_bytes)),
            )
            stats = await self._forward(ctx, body, request_id, reply)
            status = stats.status
        except ServingError as err:
            status = err.status
            if reply.started:
                await reply.error_frame(err)
            else:
                await send_error(send, err, scope["path"], reply.headers)
        except ClientDisconnected:
            status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status = CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            with contextlib.suppress(Exception):  # fails if the response had started: nothing more to say then
                await send_error(send, ServingError(500, "Internal error in the gateway."), scope["path"])
        finally:
            watch.stop()
            if counted:
                deps.metrics.request_finished(model)
            self._record(model, status, started, stats)

    async def _forward(self, ctx: RouteContext, body: bytes, request_id: bytes, reply: Reply) -> RelayStats:
        response, assignment = await self._send_upstream(ctx, body, request_id, reply)
        self.deps.demand.start(ctx.service.name, assignment.tokens)
        try:
            if response.status >= 400:
                return await self._relay_worker_error(ctx.service, response, reply)
            return await relay(response, reply, on_first_chunk=assignment.first_token)
        finally:
            response.abort()  # no-op when the response completed; otherwise the worker stops generating
            assignment.release()
            self.deps.demand.finish(ctx.service.name, assignment.tokens)

    async def _ready_endpoints(self, ctx: RouteContext, reply: Reply) -> Sequence[Endpoint]:
        deps = self.deps
        endpoints: Sequence[Endpoint] = deps.endpoints.ready_endpoints(ctx.service.name)
        if endpoints:
            return endpoints
        # No replica (scaled to zero, starting, or restarting): wait in the activator while one starts.
        keepalive = reply.keepalive if ctx.request.streamed else None
        tokens = ctx.body_size // 4 + (ctx.request.max_tokens or deps.scheduler.default_output_tokens)
        endpoints = await deps.activator.wait_for_replica(ctx.service.name, tokens, keepalive)
        if not endpoints:
            raise ServingError.no_ready_replica(ctx.service.name, deps.settings.retry_after_seconds)
        return endpoints

    async def _send_upstream(
        self, ctx: RouteContext, body: bytes, request_id: bytes, reply: Reply
    ) -> tuple[UpstreamResponse, Assignment]:
        deps = self.deps
        endpoints = await self._ready_endpoints(ctx, reply)
        headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
        while True:
            assignment = await deps.scheduler.assign(ctx, endpoints)
            try:
                response = await deps.pool.request(
                    assignment.endpoint.url,
                    b"POST",
                    self.path,
                    headers,
                    body,
                    header_timeout=deps.settings.upstream_header_timeout,
                )
                return response, assignment
            except UpstreamError as exc:
                assignment.release()
                # Unreachable replica: the request never left, so another replica may take it.
                endpoints = [e for e in endpoints if e.replica_id != assignment.endpoint.replica_id]
                if not exc.retryable or not endpoints:
                    raise ServingError.upstream_failure(str(exc)) from None
            except BaseException:
                assignment.release()
                raise

    async def _relay_worker_error(self, service: ServiceInfo, response: UpstreamResponse, reply: Reply) -> RelayStats:
        """Relay a worker's error if it is in OpenAI's envelope already; otherwise put it in one."""
        try:
            detail = await response.read()
        except UpstreamError as exc:
            raise ServingError.upstream_failure(str(exc)) from None
        envelope = _openai_error(detail)
        if envelope is not None:
            if reply.started:
                await reply.error_frame(ServingError(response.status, envelope.get("message", "worker error")))
            else:
                reply.started = True
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(detail)).encode())]
                await reply.send({"type": "http.response.start", "status": response.status,
                                  "headers": [*headers, *reply.headers]})  # fmt: skip
                await reply.send({"type": "http.response.body", "body": detail})
            return RelayStats(status=response.status)
        text = detail[:300].decode("utf-8", "replace")
        if response.status == 404:
            raise ServingError.bad_request(
                f"The model '{service.model_name}' does not serve {self.path.decode()}.",
                param="model",
                code="unsupported_endpoint",
            )
        if response.status >= 500:
            raise ServingError.upstream_failure(f"HTTP {response.status}: {text}")
        raise ServingError(response.status, text or f"The worker answered HTTP {response.status}.")

    def _record(self, model: str, status: int, started: float, stats: RelayStats | None) -> None:
        metrics = self.deps.metrics
        metrics.observe(model, self.route, status, time.perf_counter() - started)
        if stats is None:
            return
        if stats.first_chunk_at is not None:
            metrics.observe_ttft(model, self.route, stats.first_chunk_at - started)
        if stats.prompt_tokens is not None:
            metrics.count_tokens(model, "prompt", stats.prompt_tokens)
        if stats.completion_tokens is not None:
            metrics.count_tokens(model, "completion", stats.completion_tokens)
        elif stats.frames:
            metrics.count_tokens(model, "completion_estimated", max(stats.frames - 2, 0))


def add_proxy_route(
    app: GatewayApp, route: str, path: str, request_model: type[OpenAIRequest], deps: ProxyDeps
) -> None:
    """Serve POST `path` with an OpenAIProxy on the app's fast path (other methods get 405 from the router)."""
    proxy = OpenAIProxy(route, path, request_model, deps)
    app.add_fast_route(path, proxy)
    app.router.routes.append(Route(path, proxy, methods=["POST"]))


def _openai_error(body: bytes) -> dict[str, str] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed["error"]  # type: ignore[no-any-return]
    return None


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value else None
