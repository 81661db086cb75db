"""POST /v1/embeddings: forwarded to a replica of the named model; streamed when the request says so."""

from __future__ import annotations

from gateway.fastpath import GatewayApp
from gateway.openai.proxy import ProxyDeps, add_proxy_route
from llmserve.protocol.openai import EmbeddingRequest


def attach_router(app: GatewayApp, deps: ProxyDeps) -> None:
    add_proxy_route(app, "embeddings", "/v1/embeddings", EmbeddingRequest, deps)
