"""The service behind every OpenAI route: validate, resolve the model, dispatch to a replica, relay.

A pure ASGI app (no per-request framework machinery on the hot path). The client's body is forwarded unchanged;
only the fields routing and validation need are parsed (llmserve.protocol.openai). Dispatch (placement, retries of
requests that never reached a worker, holding in the activator, the ledger) is gateway/dispatch.py's.
"""

from __future__ import annotations

from typing import NoReturn

import orjson
from starlette.routing import Route

from gateway.asgi import Receive, Scope, Send, header, read_body, send_error
from gateway.dispatch import Dispatcher, Exchange, Outbound
from gateway.fastpath import GatewayApp
from gateway.graph.routes import GraphRoutes
from gateway.ledger import Dispatched
from gateway.payload_log import LoggedSend
from gateway.routing import RouteContext
from gateway.streaming import RelayStats, Reply, relay
from gateway.transform import TransformerHop
from gateway.upstream import UpstreamError, UpstreamResponse
from llmserve.protocol.errors import ServingError
from llmserve.protocol.openai import OpenAIRequest, parse_request
from llmserve.traffic import REVISION_HEADER

PIN_HEADER = REVISION_HEADER.encode()


class OpenAIProxy:
    """ASGI app for one OpenAI route (e.g. POST /v1/chat/completions)."""

    def __init__(
        self,
        route: str,
        path: str,
        request_model: type[OpenAIRequest],
        dispatcher: Dispatcher,
        graphs: GraphRoutes | None = None,
    ) -> None:
        self.route = route
        self.graphs = graphs  # InferenceGraphs exposed as models (spec.exposeAs): resolved before services
        self.path = path.encode()
        self.request_model = request_model
        self.dispatcher = dispatcher
        deps = dispatcher.deps
        self.metrics = deps.metrics
        self.ledger = deps.ledger
        self.endpoints = deps.endpoints
        self.settings = deps.settings
        self.session_header = deps.settings.session_header_bytes
        self.transformers = deps.transformers
        self.payload_log = deps.payload_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = logged = LoggedSend(send)  # payload logging sees what the client gets, after it got it
        exchange = self.dispatcher.exchange(scope, receive, send, self.route)
        reply = Reply(send, exchange.echo)
        stats: list[RelayStats] = []

        async def handle() -> int:
            body = await read_body(scope, receive, self.settings.max_body_bytes)
            request = parse_request(self.request_model, body)
            graphs = self.graphs
            graph = graphs.exposed(request.model) if graphs is not None else None
            if graphs is not None and graph is not None:
                exchange.model = request.model
                exchange.span.resolved(model=request.model, service=request.model, stream=request.streamed)
                return await graphs.answer_openai(graph, body, scope, receive, send, reply.headers, exchange.span)
            service = self.endpoints.resolve_model(request.model)
            if service is None:
                raise ServingError.model_not_found(request.model)
            exchange.model = service.model_name
            exchange.service = service.name
            exchange.span.resolved(model=service.model_name, service=service.name, stream=request.streamed)
            self.ledger.arrived(service.name)
            exchange.watch.start()
            if self.payload_log is not None:
                logged.exchange = self.payload_log.start(service, exchange.request_id, scope["headers"], body)
            hop = None
            if self.transformers is not None and service.transformer_timeout_s is not None:
                keepalive = reply.keepalive if request.streamed else None
                hop, body = await self.transformers.begin(
                    service, body, scope["headers"], scope["path"], exchange.request_id, keepalive
                )
                request = parse_request(self.request_model, body)  # the transformed request is what is routed
            ctx = RouteContext(
                service=service,
                route=self.route,
                request=request,
                body_size=len(body),
                session=_text(header(scope, self.session_header)),
                pin=_text(header(scope, PIN_HEADER)),
            )
            result = await self._forward(ctx, body, exchange, reply, hop, logged)
            stats.append(result)
            exchange.span.usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
            self.dispatcher.scheduler.observe_usage(ctx, result.prompt_tokens)  # learns characters per token
            return result.status

        async def fail(err: ServingError) -> None:
            if reply.started:
                await reply.error_frame(err)
            else:
                await send_error(send, err, scope["path"], reply.headers)

        try:
            await exchange.run(handle, fail)
        finally:
            logged.close()
        self._record(exchange, stats[0] if stats else None)

    async def _forward(
        self,
        ctx: RouteContext,
        body: bytes,
        exchange: Exchange,
        reply: Reply,
        hop: TransformerHop | None = None,
        logged: LoggedSend | None = None,
    ) -> RelayStats:
        keepalive = reply.keepalive if ctx.request.streamed else None
        held_tokens = ctx.body_size // 4 + (ctx.request.max_tokens or self.dispatcher.scheduler.default_output_tokens)
        outbound = Outbound(
            b"POST", self.path, [(b"content-type", b"application/json"), (b"x-request-id", exchange.request_id)], body
        )
        span = exchange.span
        response, dispatched = await self.dispatcher.send(
            ctx, outbound, held_tokens=held_tokens, keepalive=keepalive, span=span
        )
        exchange.revision = dispatched.endpoint.revision
        if logged is not None and logged.exchange is not None:
            logged.exchange.routed(dispatched.endpoint.revision)

        def first_chunk() -> None:
            dispatched.first_token()
            span.first_token()

        def stream_errors(chunk: bytes) -> bytes:
            return self.dispatcher.worker_stream_errors(dispatched.endpoint, chunk, path=path, model=ctx.request.model)

        path = self.path.decode()
        try:
            if response.status >= 400:
                await self._raise_worker_error(ctx, response, dispatched)
            if hop is not None:
                response = hop.response(response)
            gaps = self.metrics.inter_token(exchange.model, self.route) if ctx.request.streamed else None
            stats = await relay(response, reply, on_first_chunk=first_chunk, on_gap=gaps, rewrite_errors=stream_errors)
            if stats.status == 502:  # the stream broke or went idle mid-way: a failure of the replica's
                self.dispatcher.ejector.observed(dispatched.endpoint, failed=True, what="stream broke")
            return stats
        finally:
            response.abort()  # no-op when the response completed; otherwise the worker stops generating
            dispatched.release()

    async def _raise_worker_error(
        self, ctx: RouteContext, response: UpstreamResponse, dispatched: Dispatched
    ) -> NoReturn:
        """A worker's error answer, as the error policy has the client see it (gateway/worker_errors.py)."""
        try:
            detail = await response.read()
        except UpstreamError as exc:
            raise ServingError.upstream_failure(str(exc)) from None
        if response.status == 404 and _openai_error(detail) is None:  # the route, not the model, is not served
            raise ServingError.bad_request(
                f"The model '{ctx.service.model_name}' does not serve {self.path.decode()}.",
                param="model",
                code="unsupported_endpoint",
            )
        failure = self.dispatcher.worker_error(
            dispatched.endpoint, response.status, detail, path=self.path.decode(), model=ctx.request.model
        )
        assert failure is not None  # status >= 400
        raise failure.error

    def _record(self, exchange: Exchange, stats: RelayStats | None) -> None:
        metrics = self.metrics
        model = exchange.model
        metrics.observe(model, self.route, exchange.status, exchange.elapsed(), exchange.service, exchange.revision)
        if stats is None:
            return
        if stats.first_chunk_at is not None:
            metrics.observe_ttft(model, self.route, stats.first_chunk_at - exchange.started)
        if stats.prompt_tokens is not None:
            metrics.count_tokens(model, "prompt", stats.prompt_tokens)
        if stats.completion_tokens is not None:
            metrics.count_tokens(model, "completion", stats.completion_tokens)
        elif stats.frames:
            metrics.count_tokens(model, "completion_estimated", max(stats.frames - 2, 0))


def add_proxy_route(
    app: GatewayApp,
    route: str,
    path: str,
    request_model: type[OpenAIRequest],
    dispatcher: Dispatcher,
    graphs: GraphRoutes | None = None,
) -> None:
    """Serve POST `path` with an OpenAIProxy on the app's fast path (other methods get 405 from the router);
    `graphs`: the InferenceGraphs exposed as models on this route."""
    proxy = OpenAIProxy(route, path, request_model, dispatcher, graphs)
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
