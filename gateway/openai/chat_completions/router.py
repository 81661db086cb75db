"""POST /v1/chat/completions: forwarded to a replica of the named model; streamed when the request says so."""

from __future__ import annotations

from gateway.dispatch import Dispatcher
from gateway.fastpath import GatewayApp
from gateway.graph.routes import GraphRoutes
from gateway.openai.proxy import add_proxy_route
from llmserve.protocol.openai import ChatCompletionRequest


def attach_router(app: GatewayApp, dispatcher: Dispatcher, graphs: GraphRoutes | None = None) -> None:
    """`graphs`: InferenceGraphs with spec.exposeAs answer their model here."""
    add_proxy_route(app, "chat_completions", "/v1/chat/completions", ChatCompletionRequest, dispatcher, graphs)
