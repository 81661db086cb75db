"""InferenceGraphs in the gateway: one GraphRouter per graph the controller publishes (rebuilt when the watch
changes it; a request keeps the router it started with), served at POST /v1/graphs/{name} (and any path below it)
and, for graphs with `spec.exposeAs`, as an OpenAI model on /v1/chat/completions.

Graph routes sit on the gateway's fast path behind the same API keys (a 401 in KServe's router envelope), the
same body limit, the gateway's request metrics (`model` = the graph's name, `route` = "graph"; a graph reached as
an OpenAI model counts under that model and chat_completions), and every service step goes through the gateway's
dispatch path (gateway/graph/dispatch_caller.py): scheduler, ledger, activator, ejection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.asgi import ASGIApp, Receive, Scope, Send, header, send_bytes, send_json
from gateway.auth import BearerKeys
from gateway.dispatch import Dispatcher, next_request_id
from gateway.drain import Drain
from gateway.fastpath import GatewayApp
from gateway.graph.asgi import GraphApp, answer_client, render_error
from gateway.graph.dispatch_caller import DispatchStepCaller
from gateway.graph.interpreter import GraphRouter
from gateway.graph.settings import GraphRouterSettings
from gateway.graph.source import GraphSource
from gateway.graph.steps import StepCaller
from gateway.metrics import GatewayMetrics
from gateway.tracing import NO_REQUEST_SPAN, NO_TRACING, RequestSpan, RequestTracer
from llmserve.protocol.errors import ServingError

log = logging.getLogger("llmserve.gateway.graph")
PREFIX = "/v1/graphs"
Headers = Sequence[tuple[bytes, bytes]]


class GraphRoutes:
    def __init__(
        self,
        source: GraphSource,
        call: StepCaller,
        metrics: GatewayMetrics,
        *,
        settings: GraphRouterSettings | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        drain: Drain | None = None,
        tracer: RequestTracer = NO_TRACING,
    ) -> None:
        self._source = source
        self._drain = drain
        self._call = call
        self._settings = settings or GraphRouterSettings()
        self._metrics = metrics
        self.routers: dict[str, GraphRouter] = {}
        self._exposed: dict[str, GraphRouter] = {}
        self.app = GraphApp(
            self.routers, max_body_bytes=max_body_bytes, observe=self._observe, headers=_echo, drain=drain,
            tracer=tracer,
        )  # fmt: skip
        source.subscribe_graphs(self._changed)
        for name in list(source.graphs()):
            self._changed(name)

    def exposed(self, model: str) -> GraphRouter | None:
        """The graph exposed as OpenAI model `model`, if one is."""
        return self._exposed.get(model) if self._exposed else None

    def exposed_models(self) -> list[str]:
        return sorted(self._exposed)

    async def answer_openai(
        self,
        router: GraphRouter,
        body: bytes,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        span: RequestSpan = NO_REQUEST_SPAN,
    ) -> int:
        """Run an exposed graph on a chat request (already read and checked); errors in OpenAI's envelope. `span`:
        the chat request's, the parent of the steps' spans."""
        return await answer_client(
            router, body, scope, receive, send, errors="openai", headers=headers, drain=self._drain, span=span
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in (PREFIX, PREFIX + "/"):
            await self._list(scope, send)
            return
        await self.app(scope, receive, send)

    async def _list(self, scope: Scope, send: Send) -> None:
        if scope["method"] != "GET":
            error = ServingError(405, "GET lists the graphs; POST /v1/graphs/{name} runs one")
            await send_json(send, 405, error.graph_body(), headers=[(b"allow", b"GET")])
            return
        graphs = [
            {
                "name": name,
                "path": f"{PREFIX}/{name}",
                "exposedAs": router.graph.spec.expose_as.model if router.graph.spec.expose_as else None,
            }
            for name, router in sorted(self.routers.items())
        ]
        await send_json(send, 200, {"graphs": graphs})

    def _changed(self, name: str) -> None:
        graph = self._source.graphs().get(name)
        if graph is None:
            if self.routers.pop(name, None) is not None:
                log.info("graph '%s' removed", name)
        else:
            self.routers[name] = GraphRouter(graph, self._call, self._settings)
            log.info("graph '%s' serving at %s/%s", name, PREFIX, name)
        self._exposed = {r.graph.spec.expose_as.model: r for r in self.routers.values() if r.graph.spec.expose_as}

    def _observe(self, name: str, status: int, seconds: float) -> None:
        self._metrics.observe(name or "__unknown__", "graph", status, seconds)


class GraphKeyCheck:
    """The gateway's API keys in front of the graph routes: 401 in KServe's router envelope."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = BearerKeys(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys.accept(header(scope, b"authorization")):
            await self.app(scope, receive, send)
            return
        error = ServingError.unauthorized()
        extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        await send_bytes(send, 401, render_error(error, "graph"), headers=extra)


def attach_graphs(
    app: GatewayApp, dispatcher: Dispatcher, source: GraphSource, settings: GraphRouterSettings | None = None
) -> GraphRoutes:
    """Serve `source`'s graphs on `app` (under /v1/graphs); the returned routes also answer exposed models."""
    routes = GraphRoutes(
        source,
        DispatchStepCaller(dispatcher),
        dispatcher.deps.metrics,
        settings=settings,
        max_body_bytes=dispatcher.deps.settings.max_body_bytes,
        drain=dispatcher.deps.drain,
        tracer=dispatcher.tracer,
    )
    app.add_fast_prefix(PREFIX, routes, accept=_graph_path, key_check=GraphKeyCheck)
    return routes


def _graph_path(scope: Scope) -> bool:
    path: str = scope["path"]
    return path == PREFIX or path.startswith(PREFIX + "/")


def _echo(scope: Scope) -> Headers:
    return [(b"x-request-id", header(scope, b"x-request-id") or next_request_id())]
