"""POST /v1/completions: forwarded to a replica of the named model; streamed when the request says so."""

from __future__ import annotations

from gateway.fastpath import GatewayApp
from gateway.openai.proxy import ProxyDeps, add_proxy_route
from llmserve.protocol.openai import CompletionRequest


def attach_router(app: GatewayApp, deps: ProxyDeps) -> None:
    add_proxy_route(app, "completions", "/v1/completions", CompletionRequest, deps)
