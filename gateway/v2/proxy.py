"""The V2 REST proxy: one pure-ASGI app for every forwarded V2 / KServe V1 route (gateway/v2/paths.py).

Per request: read the body (413 beyond the limit), resolve the model to a V2 service (404), wait for a ready
replica in the activator if there is none (503 + Retry-After on overflow or deadline), place the request on the
least-busy replica, forward method, path, query and body unchanged with the headers that matter, and relay the
runtime's status, body and headers back. Bad bodies are the runtime's business: they are forwarded, and its
`{"error": ...}` answer is relayed as is. A replica that cannot be connected to is skipped for another one (the
request never left); any other failure is a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from gateway.asgi import ClientDisconnected, Receive, Scope, Send, read_body
from gateway.openai.proxy import CLIENT_CLOSED, UNKNOWN_MODEL, next_request_id
from gateway.streaming import DisconnectWatch
from gateway.upstream import Headers, UpstreamError, UpstreamResponse
from gateway.v2.dispatch import Dispatcher, V2Deps
from gateway.v2.errors import method_not_allowed, not_found, send_v2_error
from gateway.v2.paths import Target
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.errors import ServingError

log = logging.getLogger("llmserve.gateway")

# Request headers forwarded to the runtime, and response headers relayed back (content-length is recomputed).
FORWARDED = frozenset({b"content-type", b"content-encoding", b"inference-header-content-length", b"accept"})
RELAYED = frozenset({b"content-type", b"inference-header-content-length"})

Parse = Callable[[str], Target | None]


class V2Proxy:
    def __init__(self, deps: V2Deps, dispatcher: Dispatcher, parse: Parse) -> None:
        self.pool = deps.pool
        self.max_body_bytes = deps.settings.max_body_bytes
        self.header_timeout = deps.settings.upstream_header_timeout
        self.dispatcher = dispatcher
        self.parse = parse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        request_id = b""
        headers: Headers = []
        for name, value in scope["headers"]:
            if name in FORWARDED:
                headers.append((name, value))
            elif name == b"x-request-id":
                request_id = value
        request_id = request_id or next_request_id()
        headers.append((b"x-request-id", request_id))
        echo = [(b"x-request-id", request_id)]
        target = self.parse(path)
        if target is None:
            await send_v2_error(send, not_found(method, path), echo)
            return
        model = UNKNOWN_MODEL
        service: ServiceInfo | None = None
        status = 500
        watch = DisconnectWatch(receive)
        try:
            if method != target.method:
                raise method_not_allowed(method, path, target.method)
            body = await read_body(scope, receive, self.max_body_bytes)
            service = self.dispatcher.service(target.model)
            model = service.model_name
            self.dispatcher.arrived(service)
            watch.start()
            status = await self._forward(scope, service, headers, body, send, echo)
        except ServingError as err:
            status = err.status
            await send_v2_error(send, err, echo)
        except ClientDisconnected:
            status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status = CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error on %s %s", method, path)
            with contextlib.suppress(Exception):  # fails if the response had started: nothing more to say then
                await send_v2_error(send, ServingError(500, "Internal error in the gateway."), echo)
        finally:
            watch.stop()
            if service is not None:
                self.dispatcher.done(service)
            self.dispatcher.observe(model, target.route, status, started)

    async def _forward(
        self, scope: Scope, service: ServiceInfo, headers: Headers, body: bytes, send: Send, echo: Headers
    ) -> int:
        endpoints: Sequence[Endpoint] = await self.dispatcher.replicas(service)
        method: bytes = scope["method"].encode()
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        while True:
            placement = self.dispatcher.place(endpoints)
            try:
                response = await self.pool.request(
                    placement.endpoint.url, method, path, headers, body, header_timeout=self.header_timeout
                )
            except UpstreamError as exc:
                placement.release()
                # Unreachable replica: the request never left, so another replica may take it.
                endpoints = [e for e in endpoints if e.replica_id != placement.endpoint.replica_id]
                if not exc.retryable or not endpoints:
                    raise ServingError.upstream_failure(str(exc)) from None
                continue
            except BaseException:
                placement.release()
                raise
            try:
                return await _relay(response, send, echo)
            finally:
                response.abort()  # no-op when complete; otherwise the connection is closed
                placement.release()


async def _relay(response: UpstreamResponse, send: Send, echo: Headers) -> int:
    try:
        body = await response.read()
    except UpstreamError as exc:
        raise ServingError.upstream_failure(str(exc)) from None
    headers = [(k, v) for k, v in response.headers if k in RELAYED]
    headers.append((b"content-length", str(len(body)).encode()))
    headers.extend(echo)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return response.status
