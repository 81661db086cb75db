"""The V2 REST proxy: one pure-ASGI app for every forwarded V2 / KServe V1 route (gateway/v2/paths.py).

Per request: read the body (413 beyond the limit), resolve the model to a V2 service (404), dispatch it to a
replica (gateway/dispatch.py: least-request placement, the activator at zero replicas, retries of requests that
never reached a runtime), forward method, path, query and body unchanged with the headers that matter, and relay the
runtime's status, body and headers back. Bad bodies are the runtime's business: they are forwarded, and its
`{"error": ...}` answer is relayed as is (gateway/worker_errors.py `relayed_v2`: not a 401/403/405 meant for the
gateway, nor a body in another envelope, which get the gateway's own words).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.asgi import Receive, Scope, Send, header, read_body
from gateway.dispatch import Dispatcher, Exchange, Outbound
from gateway.payload_log import LoggedSend
from gateway.upstream import Headers, UpstreamError, UpstreamResponse
from gateway.v2.errors import method_not_allowed, not_found, send_v2_error
from gateway.v2.paths import Target
from gateway.v2.services import V2Services
from gateway.worker_errors import WorkerErrorKind, relayed_v2
from llmserve.protocol.errors import ServingError
from llmserve.traffic import REVISION_HEADER

# Request headers forwarded to the runtime, and response headers relayed back (content-length is recomputed).
FORWARDED = frozenset({b"content-type", b"content-encoding", b"inference-header-content-length", b"accept"})
RELAYED = frozenset({b"content-type", b"inference-header-content-length"})
TRANSFORMED_FORWARDED = frozenset({b"accept"})
PIN_HEADER = REVISION_HEADER.encode()

Parse = Callable[[str], Target | None]


class V2Proxy:
    def __init__(self, dispatcher: Dispatcher, services: V2Services, parse: Parse) -> None:
        self.dispatcher = dispatcher
        self.services = services
        self.ledger = dispatcher.ledger
        self.metrics = dispatcher.deps.metrics
        self.max_body_bytes = dispatcher.deps.settings.max_body_bytes
        self.transformers = dispatcher.deps.transformers
        self.payload_log = dispatcher.deps.payload_log
        self.parse = parse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = logged = LoggedSend(send)  # payload logging sees what the client gets, after it got it
        path: str = scope["path"]
        method: str = scope["method"]
        target = self.parse(path)
        exchange = self.dispatcher.exchange(scope, receive, send, target.route if target is not None else None)
        echo = exchange.echo
        if target is None:
            await send_v2_error(send, not_found(method, path), echo)
            return

        async def handle() -> int:
            if method != target.method:
                raise method_not_allowed(method, path, target.method)
            body = await read_body(scope, receive, self.max_body_bytes)
            service = self.services.service(target.model)
            exchange.model = service.model_name
            exchange.service = service.name
            exchange.span.resolved(model=service.model_name, service=service.name)
            self.ledger.arrived(service.name)
            exchange.watch.start()
            if self.payload_log is not None and method == "POST":
                logged.exchange = self.payload_log.start(service, exchange.request_id, scope["headers"], body)
            hop = None
            if self.transformers is not None and service.transformer_timeout_s is not None and method == "POST":
                hop, body = await self.transformers.begin(service, body, scope["headers"], path, exchange.request_id)
            ctx = self.services.context(service, target.route, len(body))
            ctx.pin = _text(header(scope, PIN_HEADER))
            outbound = self._outbound(scope, body, exchange, transformed=hop is not None)
            response, dispatched = await self.dispatcher.send(ctx, outbound, span=exchange.span)
            exchange.revision = dispatched.endpoint.revision
            if logged.exchange is not None:
                logged.exchange.routed(dispatched.endpoint.revision)
            try:
                detail = await _read(hop.response(response) if hop is not None else response)
                failure = self.dispatcher.worker_error(dispatched.endpoint, response.status, detail, path=path)
                if failure is not None and (
                    failure.kind is WorkerErrorKind.ENGINE_DEAD or not relayed_v2(response.status, detail)
                ):
                    raise failure.error
                return await _send_whole(response.status, response.headers, detail, send, echo)
            finally:
                response.abort()  # no-op when complete; otherwise the connection is closed
                dispatched.release()

        async def fail(err: ServingError) -> None:
            await send_v2_error(send, err, echo)

        try:
            await exchange.run(handle, fail)
        finally:
            logged.close()
        self.metrics.observe(
            exchange.model, target.route, exchange.status, exchange.elapsed(), exchange.service, exchange.revision
        )

    @staticmethod
    def _outbound(scope: Scope, body: bytes, exchange: Exchange, *, transformed: bool = False) -> Outbound:
        """The request for the runtime; a body the transformer rewrote is plain JSON (its encoding is gone)."""
        forwarded = TRANSFORMED_FORWARDED if transformed else FORWARDED
        headers: Headers = [(name, value) for name, value in scope["headers"] if name in forwarded]
        if transformed:
            headers.append((b"content-type", b"application/json"))
        headers.append((b"x-request-id", exchange.request_id))
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        return Outbound(scope["method"].encode(), path, headers, body)


async def _read(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except UpstreamError as exc:
        raise ServingError.upstream_failure(str(exc)) from None


async def _send_whole(status: int, upstream_headers: Headers, body: bytes, send: Send, echo: Headers) -> int:
    headers = [(k, v) for k, v in upstream_headers if k in RELAYED]
    headers.append((b"content-length", str(len(body)).encode()))
    headers.extend(echo)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value else None
