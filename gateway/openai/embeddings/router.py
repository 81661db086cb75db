"""POST /v1/embeddings: forwarded to a replica of the named model; streamed when the request says so."""

from __future__ import annotations

from gateway.dispatch import Dispatcher
from gateway.fastpath import GatewayApp
from gateway.openai.proxy import add_proxy_route
from llmserve.protocol.openai import EmbeddingRequest


def attach_router(app: GatewayApp, dispatcher: Dispatcher) -> None:
    add_proxy_route(app, "embeddings", "/v1/embeddings", EmbeddingRequest, dispatcher)
