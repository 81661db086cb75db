"""The gateway's gRPC server: Open Inference Protocol's `inference.GRPCInferenceService`, in the gateway process.

ServerLive / ServerReady / ServerMetadata are answered by the gateway (the fleet's view, as over REST).
ModelReady / ModelMetadata / ModelInfer are forwarded as raw bytes (identity (de)serializers: the tensors are
never decoded here) to a ready replica's gRPC address; the model name is read with `ModelReadyRequest`, whose
fields 1 and 2 (name, version) are also those of the other two requests, so their tensors stay unparsed bytes.
The service lookup (gateway/v2/services.py), the activator (no ready replica: hold, then forward; UNAVAILABLE after
the deadline), placement by the scheduler and counting in the load ledger are shared with REST. Unknown model:
NOT_FOUND (ModelReady answers ready=false, as the runtime does: clients poll with it). With API keys configured,
every call needs `authorization: Bearer <key>` metadata (else UNAUTHENTICATED).

Channels to replicas: gateway/v2/channels.py. A call is retried on another replica only when its replica could
not be connected to ("failed to connect"), so a request never runs twice. Imported only when
`GatewaySettings.grpc_port` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from gateway.auth import BearerKeys
from gateway.dispatch import CLIENT_CLOSED, UNKNOWN_MODEL, Dispatcher, observe_decision
from gateway.tracing import RequestSpan
from gateway.v2.channels import ChannelCache
from gateway.v2.server import EXTENSIONS, NAME, VERSION, not_ready_message
from gateway.v2.services import V2Services
from llmserve.endpoints import ServiceInfo
from llmserve.frontdoor import grpc_server_options
from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb

log = logging.getLogger("llmserve.gateway")

SERVICE = "inference.GRPCInferenceService"
FORWARDED = {"ModelReady": "grpc_ready", "ModelMetadata": "grpc_metadata", "ModelInfer": "grpc_infer"}
MODEL_READY = f"/{SERVICE}/ModelReady"
_CODE_OF_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Metrics record an HTTP-like status for gRPC calls too, so one llmserve_requests_total covers both.
_STATUS_OF_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.CANCELLED: CLIENT_CLOSED,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Client metadata not passed on to replicas: the gateway's key, and what gRPC sets itself.
_NOT_READY = pb.ModelReadyResponse(ready=False).SerializeToString()
_NOT_FORWARDED = frozenset({"authorization", "user-agent", "content-type", "te", "traceparent", "tracestate"})

Unary = Callable[[bytes, aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class GrpcProxy:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.deps = dispatcher.deps
        self.dispatcher = dispatcher
        self.services = V2Services(dispatcher.endpoints)
        self.keys = BearerKeys([key.get_secret_value() for key in self.deps.settings.api_keys])
        self.port = 0
        self._server: aio.Server | None = None
        self._channels: ChannelCache | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._metadata = pb.ServerMetadataResponse(name=NAME, version=VERSION, extensions=EXTENSIONS)

    @property
    def channels(self) -> ChannelCache:
        assert self._channels is not None, "not started"
        return self._channels

    async def start(self, host: str, port: int) -> int:
        limit = self.deps.settings.max_body_bytes
        self._channels = ChannelCache(
            self.deps.endpoints, [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", -1)]
        )
        server = aio.server(
            options=[
                *grpc_server_options(self.deps.settings.front_door, max_message_bytes=limit),
                ("grpc.max_send_message_length", -1),
                # A port in use is an error, unless several gateway processes share the port on purpose.
                ("grpc.so_reuseport", 1 if self.deps.settings.reuse_port else 0),
            ]
        )
        server.add_generic_rpc_handlers((_Handler(self._methods()),))
        self.port = server.add_insecure_port(f"{host}:{port}")  # RuntimeError when it cannot bind
        if self.port == 0:
            raise RuntimeError(f"cannot bind the gateway's gRPC server to {host}:{port}")
        await server.start()
        self._server = server
        log.info("gateway gRPC (inference.GRPCInferenceService) on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace_s: float = 1.0) -> None:
        """No new calls; those in flight get `grace_s`. A second call waits for the first stop (a drain's grace
        is not shortened by the lifespan's own stop)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._channels is not None:
            await self._channels.close()

    def _methods(self) -> dict[str, Unary]:
        methods: dict[str, Unary] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
        }
        for name, route in FORWARDED.items():
            methods[name] = self._forwarder(f"/{SERVICE}/{name}", route)
        return methods

    # -- answered here -----------------------------------------------------------------------------------------
    async def _server_live(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        await self._authorize(context)
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def _server_ready(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        await self._authorize(context)
        waiting = self.services.waiting_services()
        if waiting:
            log.debug("gRPC ServerReady: %s", not_ready_message(waiting))
        return pb.ServerReadyResponse(ready=not waiting).SerializeToString()

    async def _server_metadata(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        await self._authorize(context)
        return self._metadata.SerializeToString()

    async def _authorize(self, context: aio.ServicerContext[bytes, bytes]) -> None:
        if not self.keys:
            return
        value = _metadata_value(context, "authorization")
        if not self.keys.accept(value.encode() if value is not None else None):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, ServingError.unauthorized().message)

    # -- forwarded ---------------------------------------------------------------------------------------------
    def _forwarder(self, method: str, route: str) -> Unary:
        async def forward(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self._forward(method, route, request, context)

        return forward

    async def _forward(
        self, method: str, route: str, request: bytes, context: aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        await self._authorize(context)  # in front, and not counted (as over REST)
        started = time.perf_counter()
        model = UNKNOWN_MODEL
        service_name = ""
        status = 500
        error: str | None = None
        span = self.dispatcher.tracer.request(route, _incoming_trace(context))
        try:
            try:
                name = pb.ModelReadyRequest.FromString(request).name  # field 1 of all three requests
            except Exception:  # protobuf's DecodeError
                raise ServingError(400, "The request is not a valid protobuf message.") from None
            if method == MODEL_READY and self._unknown(name):
                status = 404
                return _NOT_READY  # as the runtime answers: clients poll ModelReady
            service = self.services.service(name)
            model, service_name = service.model_name, service.name
            span.resolved(model=model, service=service_name)
            if service.transformer_timeout_s is not None and route == "grpc_infer":
                raise ServingError(501, f"'{name}' has a transformer, which gRPC does not pass through: use REST.")
            self.dispatcher.ledger.arrived(service.name)
            reply = await self._call_replica(service, route, method, request, context, span)
            if isinstance(reply, aio.AioRpcError):
                status = _STATUS_OF_CODE.get(reply.code(), 500)
                error = reply.details() or None
                await context.abort(reply.code(), reply.details() or "")
            status = 200
            return reply
        except ServingError as err:
            status, error = err.status, err.message
            await context.abort(_CODE_OF_STATUS.get(err.status, grpc.StatusCode.INTERNAL), err.message)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            span.finish(status, error)
            self.deps.metrics.observe(model, route, status, time.perf_counter() - started, service_name)

    def _unknown(self, model: str) -> bool:
        try:
            self.services.service(model)
        except ServingError:
            return True
        return False

    async def _call_replica(
        self,
        service: ServiceInfo,
        route: str,
        method: str,
        request: bytes,
        context: aio.ServicerContext[bytes, bytes],
        span: RequestSpan,
    ) -> bytes | aio.AioRpcError:
        """The replica's reply, or its error."""
        ctx = self.services.context(service, route, len(request))
        endpoints = [e for e in await self.dispatcher.ready(ctx, 0, None, span) if e.grpc_address]
        if not endpoints:
            raise ServingError(503, f"No ready replica of '{service.name}' serves gRPC.")
        metadata = _forwarded_metadata(context)
        attempt = 0
        while True:
            with span.routing():
                dispatched = await self.dispatcher.scheduler.assign(ctx, endpoints)
                observe_decision(ctx, dispatched.endpoint, self.deps.metrics, span)
            address = dispatched.endpoint.grpc_address
            assert address is not None
            attempt += 1
            upstream = span.upstream(dispatched.endpoint.replica_id, f"grpc://{address}", attempt)
            traced = tuple((k.decode(), v.decode()) for k, v in upstream.inject([]))
            entry = self.channels.acquire(dispatched.endpoint, address)
            try:
                call: aio.UnaryUnaryMultiCallable[bytes, bytes] = entry.channel.unary_unary(method)
                reply = await call(request, timeout=context.time_remaining(), metadata=metadata + traced)
                upstream.answered(200)
                return reply
            except aio.AioRpcError as exc:
                upstream.end(_STATUS_OF_CODE.get(exc.code(), 500), exc.details() or None)
                if not _not_connected(exc):
                    return exc
                self.dispatcher.ejector.eject(dispatched.endpoint, f"gRPC unreachable: {exc.details()}")
                endpoints = [e for e in endpoints if e.replica_id != dispatched.endpoint.replica_id]
                if not endpoints:
                    return exc
            finally:
                self.channels.release(entry)
                dispatched.release()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, methods: dict[str, Unary]) -> None:
        prefix = f"/{SERVICE}/"
        # No (de)serializers: requests and replies are the raw bytes of the messages.
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            prefix + name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handlers.get(handler_call_details.method)


def _metadata_value(context: aio.ServicerContext[bytes, bytes], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _incoming_trace(context: aio.ServicerContext[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The caller's W3C trace context, as header pairs for the tracer."""
    return [
        (name.encode(), value if isinstance(value, bytes) else value.encode("latin-1"))
        for name, value in context.invocation_metadata() or ()
        if name in ("traceparent", "tracestate")
    ]


def _forwarded_metadata(context: aio.ServicerContext[bytes, bytes]) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (name, value)
        for name, value in context.invocation_metadata() or ()
        if name not in _NOT_FORWARDED and not name.startswith(("grpc-", ":"))
    )


def _not_connected(error: aio.AioRpcError) -> bool:
    """The call failed before reaching the replica (gRPC reports "failed to connect to all addresses")."""
    return error.code() is grpc.StatusCode.UNAVAILABLE and "failed to connect" in (error.details() or "").lower()
