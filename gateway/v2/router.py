"""Wiring: the V2 REST routes on the gateway's fast path, and the gRPC server's start (lazily imported)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.asgi import Receive, Scope, Send
from gateway.dispatch import Dispatcher
from gateway.fastpath import GatewayApp
from gateway.v2.auth import V2KeyCheck
from gateway.v2.errors import send_v2_error
from gateway.v2.paths import is_v1_call, v1_target, v2_target
from gateway.v2.proxy import V2Proxy
from gateway.v2.server import PATHS, ServerRoutes
from gateway.v2.services import V2Services
from llmserve.protocol.errors import ServingError

if TYPE_CHECKING:
    from gateway.v2.grpc_proxy import GrpcProxy

log = logging.getLogger("llmserve.gateway")


class V2Routes:
    """Everything under /v2: the gateway's own server routes, or a forwarded model route."""

    def __init__(self, server: ServerRoutes, proxy: V2Proxy) -> None:
        self.server = server
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in PATHS:
            try:
                await self.server(scope, receive, send)
            except ServingError as err:
                await send_v2_error(send, err)
        else:
            await self.proxy(scope, receive, send)


def _v1_call(scope: Scope) -> bool:
    return scope["method"] == "POST" and is_v1_call(scope["path"])


def attach_router(app: GatewayApp, dispatcher: Dispatcher) -> None:
    """Serve /v2/... (any method) and POST /v1/models/{name}:predict|:explain on the fast path."""
    services = V2Services(dispatcher.endpoints)
    v2 = V2Routes(ServerRoutes(services), V2Proxy(dispatcher, services, v2_target))
    app.add_fast_prefix("/v2", v2, key_check=V2KeyCheck)
    v1 = V2Proxy(dispatcher, services, v1_target)
    app.add_fast_prefix("/v1/models/", v1, accept=_v1_call, key_check=V2KeyCheck)


async def start_grpc(dispatcher: Dispatcher) -> GrpcProxy | None:
    """The gateway's gRPC server on `settings.grpc_port`, started; None when the port is 0 (off).

    gRPC is a second door: if it cannot open (grpcio missing, port taken), the error is logged and the gateway
    serves HTTP without it rather than not at all.
    """
    settings = dispatcher.deps.settings
    if not settings.grpc_port:
        return None
    try:
        from gateway.v2.grpc_proxy import GrpcProxy
    except ImportError as exc:
        log.error("gateway gRPC is off: %s (it needs the v2 extra: pip install 'llmserve[v2]')", exc)
        return None
    proxy = GrpcProxy(dispatcher)
    try:
        await proxy.start(settings.host, settings.grpc_port)
    except RuntimeError as exc:
        log.error("gateway gRPC is off: cannot listen on %s:%d (%s)", settings.host, settings.grpc_port, exc)
        await proxy.stop()
        return None
    return proxy
