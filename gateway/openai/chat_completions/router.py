"""POST /v1/chat/completions: forwarded to a replica of the named model; streamed when the request says so."""

from __future__ import annotations

from gateway.fastpath import GatewayApp
from gateway.openai.proxy import ProxyDeps, add_proxy_route
from llmserve.protocol.openai import ChatCompletionRequest


def attach_router(app: GatewayApp, deps: ProxyDeps) -> None:
    add_proxy_route(app, "chat_completions", "/v1/chat/completions", ChatCompletionRequest, deps)
