"""One way to dispatch a request to a replica, for every protocol on HTTP (OpenAI and V2).

`Dispatcher.send` places a request on a ready replica of its service (of the revision the traffic split picks for
it: gateway/revisions.py; the scheduler chooses among them; the load ledger counts it from that moment until it is
released) and sends it. With no ready replica, or every one at its load cap (gateway/capacity.py), the request waits
in the activator's bounded queue. A replica the request never reached (connection refused or reset before any byte)
is ejected on this gateway and the request goes to another replica, or waits in the activator until one is ready
again: nothing that reached a worker is sent twice, with one exception: a streamed request whose worker sends no
headers within the per-try timeout (`upstream_first_byte_timeout_s`; vLLM sends a stream's headers before any token)
is aborted there and sent to another replica, once: nothing has reached the client. After the first byte, a worker
silent for longer than `upstream_stream_idle_timeout_s` ends the response (an error frame in a stream, never a
replay). Outcomes feed the outlier rule (gateway/ejection.py). A worker's error answer is turned into what the client
sees by the error policy (gateway/worker_errors.py: the request's fault in the worker's cleaned words, anything else
in the gateway's); a worker that answers that its engine is dead is ejected too, and the client gets the gateway's
502.

`Exchange` is the client's side of one request, the skeleton both proxies share: how a failure becomes a response
(before the response started, or as one error frame after), client disconnects (499; the upstream is aborted),
unexpected errors (500, logged), and the end of a graceful drain (gateway/drain.py: 503, or an error frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway.activator import Activator, KeepAlive
from gateway.asgi import ClientDisconnected, Receive, Scope, Send, header
from gateway.drain import Drain, shutting_down
from gateway.ejection import Ejector
from gateway.ledger import Dispatched, LoadLedger
from gateway.metrics import GatewayMetrics
from gateway.payload_log import PayloadLogger
from gateway.recent_errors import RecentErrors
from gateway.revisions import RevisionPicker
from gateway.routing import RouteContext, Scheduler
from gateway.settings import GatewaySettings
from gateway.streaming import DisconnectWatch
from gateway.tracing import NO_REQUEST_SPAN, NO_TRACING, RequestSpan, RequestTracer
from gateway.transform import Transformers
from gateway.upstream import Headers, UpstreamError, UpstreamPool, UpstreamResponse
from gateway.worker_errors import WorkerError, WorkerErrorKind, rewrite_stream_errors, worker_error
from llmserve.endpoints import Endpoint, EndpointReader
from llmserve.protocol.errors import ServingError

log = logging.getLogger("llmserve.gateway")

UNKNOWN_MODEL = "__unknown__"  # metrics label for requests naming no served model (bounded cardinality)
CLIENT_CLOSED = 499
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def next_request_id() -> bytes:
    """Unique per process start (random prefix) and cheap (a counter): no uuid4 on the hot path."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}".encode()


@dataclass(frozen=True)
class DispatchDeps:
    """What dispatching needs; built once by create_app."""

    endpoints: EndpointReader  # ready endpoints, ejected replicas left out
    scheduler: Scheduler
    ledger: LoadLedger
    pool: UpstreamPool
    activator: Activator
    ejector: Ejector
    metrics: GatewayMetrics
    settings: GatewaySettings
    tracer: RequestTracer = NO_TRACING
    errors: RecentErrors = field(default_factory=RecentErrors)  # the last 5xx answers, for the status page
    revisions: RevisionPicker = field(default_factory=RevisionPicker)  # the traffic split, per request
    transformers: Transformers | None = None  # hooks around dispatch, for services with a transformer
    payload_log: PayloadLogger | None = None  # for services with a logger
    drain: Drain = field(default_factory=Drain)  # the requests in flight, cut at the end of a graceful drain


@dataclass(slots=True)
class Outbound:
    """The request as it goes to a replica."""

    method: bytes
    path: bytes
    headers: Headers
    body: bytes


class Dispatcher:
    def __init__(self, deps: DispatchDeps) -> None:
        self.deps = deps
        self.endpoints = deps.endpoints
        self.scheduler = deps.scheduler
        self.ledger = deps.ledger
        self.pool = deps.pool
        self.activator = deps.activator
        self.ejector = deps.ejector
        self.revisions = deps.revisions
        self.header_timeout = deps.settings.upstream_header_timeout
        self.first_byte_timeout = deps.settings.upstream_first_byte_timeout_s
        self.stream_idle_timeout = deps.settings.upstream_stream_idle_timeout_s
        self.retry_after_s = deps.settings.retry_after_seconds
        self.tracer = deps.tracer
        self.metrics = deps.metrics

    def exchange(self, scope: Scope, receive: Receive, send: Send, route: str | None) -> Exchange:
        """The Exchange of one request on `route` (a metrics route label), traced when tracing is on (route None:
        a path that names no route, answered at once, untraced)."""
        span = self.tracer.request(route, scope["headers"]) if route is not None else NO_REQUEST_SPAN
        return Exchange(scope, receive, send, span=span, errors=self.deps.errors, drain=self.deps.drain)

    async def ready(
        self,
        ctx: RouteContext,
        held_tokens: int,
        keepalive: KeepAlive | None,
        span: RequestSpan = NO_REQUEST_SPAN,
        *,
        again: bool = False,
    ) -> Sequence[Endpoint]:
        """The ready replicas of the revision the request goes to (gateway/revisions.py) with room for it
        (gateway/capacity.py); with none, or with others already waiting, the request waits in the activator's queue
        (429 / 503 + Retry-After when it is full or at the deadline). `again`: it was placed once and found no room
        after all (it goes to the head)."""
        service = ctx.service
        activator = self.activator
        narrow = self.revisions.narrow
        open_ = activator.capacity.open

        def usable(ready: Sequence[Endpoint]) -> tuple[str, Sequence[Endpoint]]:
            revision, endpoints = narrow(service, ready, pin=ctx.pin, session=ctx.session)
            return revision, open_(service, endpoints, held_tokens) if endpoints else endpoints

        if not again and not activator.waiting(service.name):
            _, opened = usable(self.endpoints.ready_endpoints(service.name))
            if opened:
                return opened
        with span.held():
            return await activator.admit(service, held_tokens, keepalive, usable, again=again)

    async def send(
        self,
        ctx: RouteContext,
        outbound: Outbound,
        *,
        held_tokens: int = 0,
        keepalive: KeepAlive | None = None,
        span: RequestSpan = NO_REQUEST_SPAN,
    ) -> tuple[UpstreamResponse, Dispatched]:
        """Dispatch `outbound` to a replica of `ctx.service`: the worker's response (headers read) and the ledger's
        record of the request (the caller releases it when the response has ended). `span` (the request's trace)
        gets the activator wait, the routing decision and one upstream call per attempt, each attempt's request
        carrying its W3C traceparent."""
        tried: set[tuple[str, str]] = set()
        again = False
        stalled = False
        while True:
            ready = await self.ready(ctx, held_tokens, keepalive, span, again=again)
            endpoints = [e for e in ready if (e.replica_id, e.url) not in tried] or ready
            with span.routing():
                dispatched = await self.scheduler.assign(ctx, endpoints)
                endpoint = dispatched.endpoint
                observe_decision(ctx, endpoint, self.metrics, span)
            again = self.activator.capacity.exceeded(ctx.service, endpoint)
            if again:  # another request took the last slot while this one was being placed: back to the queue
                dispatched.release()
                continue
            key = (endpoint.replica_id, endpoint.url)
            per_try = None if stalled else self._first_byte_limit(ctx, ready, tried, key)
            call = span.upstream(endpoint.replica_id, endpoint.url, len(tried) + 1)
            try:
                response = await self.pool.request(
                    endpoint.url,
                    outbound.method,
                    outbound.path,
                    call.inject(outbound.headers),
                    outbound.body,
                    header_timeout=per_try or self.header_timeout,
                )
                call.answered(response.status)
                self.ejector.observed(endpoint, failed=response.status >= 500, what="HTTP 5xx")
                if self.stream_idle_timeout:
                    response.watch_idle(self.stream_idle_timeout)
                return response, dispatched
            except UpstreamError as exc:
                call.end(error=str(exc))
                dispatched.release()
                if exc.stalled:
                    self.ejector.observed(endpoint, failed=True, what="no response headers")
                if exc.stalled and per_try is not None:  # nothing reached the client yet: another replica gets it
                    log.info("replica %s sent nothing within %g s: the request goes elsewhere", endpoint.replica_id,
                             per_try)  # fmt: skip
                    tried.add(key)
                    stalled = True
                    continue
                if not exc.retryable:  # the request may have reached the worker: never send it twice
                    raise ServingError.upstream_failure(str(exc)) from None
                if (endpoint.replica_id, endpoint.url) in tried:  # a second refusal from a re-published address
                    raise ServingError.upstream_failure(str(exc)) from None
                tried.add((endpoint.replica_id, endpoint.url))
                log.info("replica %s unreachable (%s): ejected, request sent elsewhere", endpoint.replica_id, exc)
                self.ejector.eject(endpoint, f"unreachable: {exc}")
            except BaseException as exc:
                call.end(error=type(exc).__name__)
                dispatched.release()
                raise

    def _first_byte_limit(
        self, ctx: RouteContext, ready: Sequence[Endpoint], tried: set[tuple[str, str]], key: tuple[str, str]
    ) -> float | None:
        """The per-try timeout: for a streamed request (vLLM sends a stream's headers at once, before any token),
        when another ready replica could take it over. Non-streamed requests get their headers only when the
        generation ends: a slow answer and a stalled worker look the same, so they wait (upstream_header_timeout)."""
        limit = self.first_byte_timeout
        if limit is None or not ctx.request.streamed:
            return None
        if not any((e.replica_id, e.url) not in tried and (e.replica_id, e.url) != key for e in ready):
            return None
        return min(limit, self.header_timeout) if self.header_timeout is not None else limit

    def worker_error(
        self, endpoint: Endpoint, status: int, body: bytes, *, path: str = "", model: str | None = None
    ) -> WorkerError | None:
        """A worker's error answer (None below 400) classified by the error policy: `error` is what the client
        sees, the worker's own text goes to the log; an engine that died gets its replica ejected."""
        if status < 400:
            return None
        failure = worker_error(status, body, path=path, model=model, retry_after_s=self.retry_after_s)
        self._worker_failed(endpoint, failure, status)
        return failure

    def worker_stream_errors(self, endpoint: Endpoint, chunk: bytes, *, path: str, model: str | None) -> bytes:
        """A stream's chunk with the error events the worker sent mid-stream in the gateway's words (policy)."""
        chunk, failures = rewrite_stream_errors(chunk, path=path, model=model)
        for failure in failures:
            self._worker_failed(endpoint, failure, failure.error.status)
        return chunk

    def _worker_failed(self, endpoint: Endpoint, failure: WorkerError, status: int) -> None:
        if failure.kind is WorkerErrorKind.ENGINE_DEAD:
            log.warning("replica %s: engine dead (HTTP %d: %s); ejected", endpoint.replica_id, status,
                        failure.worker_message)  # fmt: skip
            self.ejector.eject(endpoint, "engine dead")
        elif failure.kind is not WorkerErrorKind.CLIENT:
            log.info("replica %s answered HTTP %d: %s", endpoint.replica_id, status, failure.worker_message)


def observe_decision(ctx: RouteContext, endpoint: Endpoint, metrics: GatewayMetrics, span: RequestSpan) -> None:
    """The scheduler's decision (ctx.decision) into the routing metrics and the request's span."""
    decision = ctx.decision
    if decision is None:
        return
    metrics.count_decision(ctx.service.name, decision)
    span.routed(
        replica=endpoint.replica_id,
        revision=endpoint.revision or None,
        profile=decision.profile,
        scorer=decision.scorer,
        prefix_hit=decision.prefix_hit,
    )


ErrorSender = Callable[[ServingError], Awaitable[None]]


class Exchange:
    """One client request through the gateway: what both protocols' proxies share.

    `run(handle, send_error)` runs the protocol's handler and turns every way it can end into the right
    response and status: a ServingError is sent with `send_error` (the protocol's envelope, or an error frame once
    a stream started), a client that disconnects ends as 499 with its upstream aborted, a request still in flight
    at the end of a graceful drain gets the drain's 503 (or error frame), anything else is a logged 500. `status`,
    `model`, `service` and `revision` are what metrics record afterwards; when it ends, the request's `span` is
    finished and a 5xx goes to `errors` (the status page's recent errors).
    """

    __slots__ = ("drain", "error", "errors", "model", "receive", "request_id", "revision", "scope", "send",
                 "service", "span", "started", "status", "watch")  # fmt: skip

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        span: RequestSpan = NO_REQUEST_SPAN,
        errors: RecentErrors | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started = time.perf_counter()
        self.request_id = header(scope, b"x-request-id") or next_request_id()
        self.watch = DisconnectWatch(receive)
        self.status = 500
        self.model = UNKNOWN_MODEL
        self.service = ""  # the service that answered (empty until the model resolved to one)
        self.revision = ""  # the revision of the replica it was dispatched to
        self.error: str | None = None  # the gateway's own error message, when it answered one
        self.span = span
        self.errors = errors
        self.drain = drain

    @property
    def echo(self) -> list[tuple[bytes, bytes]]:
        """Headers every response carries."""
        return [(b"x-request-id", self.request_id)]

    async def run(self, handle: Callable[[], Awaitable[int]], send_error: ErrorSender) -> None:
        drain = self.drain
        task = drain.track() if drain is not None else None
        try:
            self.status = await handle()
        except ServingError as err:
            self.status = err.status
            self.error = err.message
            await send_error(err)
        except ClientDisconnected:
            self.status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if drain is not None and drain.cut_here(task):
                cut = shutting_down()
                self.status, self.error = cut.status, cut.message
                with contextlib.suppress(Exception):
                    await send_error(cut)
                return
            if not self.watch.gone:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self.status = CLIENT_CLOSED
        except Exception as exc:
            log.exception("unhandled error on %s %s", self.scope["method"], self.scope["path"])
            self.status = 500
            self.error = f"Internal error in the gateway: {type(exc).__name__}"
            with contextlib.suppress(Exception):  # fails if the response had started: nothing more to say then
                await send_error(ServingError(500, "Internal error in the gateway."))
        finally:
            if drain is not None:
                drain.untrack(task)
            self.watch.stop()
            self._ended()

    def _ended(self) -> None:
        self.span.finish(self.status, self.error)
        if self.status >= 500 and self.errors is not None:
            message = self.error or f"The worker answered HTTP {self.status}."
            self.errors.add(self.service or self.model, self.status, message)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
