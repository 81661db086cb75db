"""OpenTelemetry tracing of the gateway's requests: one span per request, a few child spans, W3C propagation.

Off unless `--otlp-endpoint` or the standard `OTEL_*` variables say where to export (`TracingSettings`). Off,
`build_tracer` returns `NO_TRACING`, whose spans are one shared object whose methods do nothing: no
opentelemetry import, no allocation per request. On, it needs the `tracing` extra (opentelemetry-sdk and the
OTLP exporters).

What the dispatch path calls, per request (every call also exists on the no-op objects):

    span = tracer.request("chat_completions", scope_headers)       # SERVER span; joins a client's traceparent
    span.resolved(model="smollm2", service="smollm2", tenant="team-a", stream=True)
    with span.held():                                               # child: activator.wait (only when held)
        ...
    with span.routing():                                            # child: routing (the decision)
        ...
        span.routed(replica="smollm2-0", revision="r2", profile="token-aware", scorer="prefix-cache",
                    prefix_hit=0.83)
    call = span.upstream("smollm2-0", url, attempt=1)               # child: upstream (CLIENT), one per attempt
    headers = call.inject(headers)                                  # + traceparent: vLLM's span joins the trace
    call.answered(200)                                              # the worker's status (headers read)
    ...                                                             # a failed attempt: call.end(error="...")
    span.first_token()                                              # TTFT (an event, not a span per chunk)
    span.usage(prompt_tokens=812, completion_tokens=64)
    span.finish(200)                                                # or finish(502, "worker unreachable");
                                                                    # also ends the last upstream call if open

A graph's request span is `current_graph_span` while the graph runs (gateway/graph/asgi.py); each service step
is `span.step_request(label, kind)`, a child that takes the same calls as a request span (activator wait,
routing, upstream; `finish` ends it), so a step's dispatch is traced as a request's is. No span is ever made per
SSE chunk. Attribute names follow OpenTelemetry's GenAI and HTTP conventions where they have one
(`gen_ai.request.model`, `gen_ai.usage.input_tokens`, `http.response.status_code`; TTFT as vLLM's own span
names it, `gen_ai.latency.time_to_first_token`), `llmserve.*` for the rest.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

Headers = list[tuple[bytes, bytes]]
IncomingHeaders = Sequence[tuple[bytes, bytes]]
Protocol = Literal["grpc", "http/protobuf"]

# Attribute names, in one place.
ROUTE = "llmserve.route"
MODEL = "gen_ai.request.model"
SERVICE = "llmserve.service"
TENANT = "llmserve.tenant"
STREAM = "llmserve.stream"
REVISION = "llmserve.revision"
REPLICA = "llmserve.replica"
PROFILE = "llmserve.routing.profile"
SCORER = "llmserve.routing.scorer"
PREFIX_HIT = "llmserve.routing.prefix_hit"
HELD_S = "llmserve.activator.held_s"
TTFT = "gen_ai.latency.time_to_first_token"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "llmserve.error.message"
ATTEMPT = "llmserve.upstream.attempt"
SERVER_ADDRESS = "server.address"
URL = "url.full"
STEP = "llmserve.graph.step"
STEP_KIND = "llmserve.graph.router_type"


class TracingSettings(BaseModel):
    """Where spans go; built in main() (`from_environment`) and passed down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP collector for spans, e.g. http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318/v1/traces "
        "(HTTP); None: tracing off.",
    )
    protocol: Protocol = Field(default="grpc", description="OTLP transport: grpc, or http/protobuf.")
    service_name: str = Field(default="llmserve-gateway", description="service.name of the gateway's spans.")
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of new traces recorded; a client's sampled flag wins."
    )
    insecure: bool = Field(
        default=True, description="gRPC without TLS (default for http:// endpoints; https:// ones use TLS)."
    )

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], otlp_endpoint: str | None = None) -> TracingSettings:
        """`--otlp-endpoint` if given, else OpenTelemetry's standard variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
        / OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL, OTEL_SERVICE_NAME,
        OTEL_TRACES_SAMPLER(_ARG) (traceidratio kinds), OTEL_EXPORTER_OTLP[_TRACES]_INSECURE; OTEL_SDK_DISABLED=true
        or OTEL_TRACES_EXPORTER=none turn it off. OTEL_TRACES_EXPORTER=otlp alone means OTLP's default address."""
        env = {k: v.strip() for k, v in environ.items() if k.startswith("OTEL_")}
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        if protocol not in ("grpc", "http/protobuf"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (grpc, http/protobuf)")
        off = env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER") == "none"
        endpoint = otlp_endpoint
        if endpoint is None and not off:
            endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
            generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
            if endpoint is None and generic is None and env.get("OTEL_TRACES_EXPORTER") == "otlp":
                generic = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"
            if endpoint is None and generic is not None:  # the generic endpoint is a base URL for HTTP
                endpoint = generic if protocol == "grpc" else generic.rstrip("/") + "/v1/traces"
        ratio = 1.0
        if env.get("OTEL_TRACES_SAMPLER") in ("traceidratio", "parentbased_traceidratio"):
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        insecure = env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or env.get("OTEL_EXPORTER_OTLP_INSECURE")
        return cls(
            otlp_endpoint=endpoint,
            protocol=protocol,  # type: ignore[arg-type]  # one of the two, checked above
            service_name=env.get("OTEL_SERVICE_NAME") or "llmserve-gateway",
            sample_ratio=ratio,
            insecure=insecure.lower() == "true" if insecure else not (endpoint or "").startswith("https:"),
        )


# -- the no-op implementation (tracing off) --------------------------------------------------------------------
class Span:
    """A span of a request's trace. This class is the no-op one: every method does nothing and returns a shared
    object; `inject` returns the headers it was given."""

    __slots__ = ()

    def step(self, name: str, kind: str) -> Span:
        """A child span for one graph step (`kind`: Sequence, Switch, Ensemble, Splitter...)."""
        return NO_SPAN

    def upstream(self, replica: str, url: str, attempt: int = 1) -> Span:
        """A CLIENT child span for one call to a worker; `inject` its context into that call's headers."""
        return NO_SPAN

    def inject(self, headers: Headers) -> Headers:
        """`headers` with this span's W3C `traceparent` (and `tracestate`) added."""
        return headers

    def answered(self, status: int) -> None:
        """The other side answered with `status` (the span goes on: a stream is still being read)."""

    def end(self, status: int | None = None, error: str | None = None) -> None:
        return None

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


class RequestSpan(Span):
    """The span of one request (no-op here; see `build_tracer`)."""

    __slots__ = ()

    def resolved(self, *, model: str, service: str, tenant: str | None = None, stream: bool = False) -> None:
        """The request named `model`, served by `service` (for `tenant`, when tenants exist)."""

    def step_request(self, name: str, kind: str) -> RequestSpan:
        """A child span for one graph step that is dispatched as a request (to a service); `finish` ends it."""
        return NO_REQUEST_SPAN

    def held(self) -> Span:
        """A child span for the time the activator holds the request; its length is also `llmserve.activator.held_s`."""
        return NO_SPAN

    def routing(self) -> Span:
        """A child span around the routing decision."""
        return NO_SPAN

    def routed(
        self,
        *,
        replica: str,
        revision: str | None = None,
        profile: str | None = None,
        scorer: str | None = None,
        prefix_hit: float | None = None,
    ) -> None:
        """The decision: the replica chosen, by which profile, the scorer that won it, the share of the prompt the
        replica is estimated to hold in its prefix cache."""

    def first_token(self) -> None:
        """The first token went to the client: TTFT."""

    def usage(self, *, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        """Tokens in and out, from the worker's usage (or the gateway's estimate)."""

    def finish(self, status: int, error: str | None = None) -> None:
        """The response ended with `status`; `error`: what went wrong (the span's status becomes ERROR)."""


class RequestTracer:
    """Makes request spans; this class is the no-op one (tracing off)."""

    __slots__ = ()

    enabled = False

    def request(self, route: str, headers: IncomingHeaders = ()) -> RequestSpan:
        """The span of a request on `route` (a metrics route label: chat_completions, v2_infer...), child of the
        client's span when `headers` carry a W3C traceparent."""
        return NO_REQUEST_SPAN

    def close(self) -> None:
        """Export what is buffered and stop (at shutdown)."""


NO_SPAN = Span()
NO_REQUEST_SPAN = RequestSpan()
NO_TRACING = RequestTracer()
# The span of the graph request being run in this task (and the step tasks it starts); NO_REQUEST_SPAN elsewhere.
current_graph_span: ContextVar[RequestSpan] = ContextVar("current_graph_span", default=NO_REQUEST_SPAN)


def build_tracer(settings: TracingSettings, *, exporter: SpanExporter | None = None) -> RequestTracer:
    """NO_TRACING when tracing is off; otherwise a tracer exporting over OTLP in batches (or to `exporter`,
    synchronously: tests pass the SDK's InMemorySpanExporter)."""
    if not settings.enabled and exporter is None:
        return NO_TRACING
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise RuntimeError(
            "tracing is on (--otlp-endpoint or OTEL_* variables) but OpenTelemetry is not installed: "
            "pip install 'llmserve[tracing]'"
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
    return _OtelTracer(provider)


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.otlp_endpoint, insecure=settings.insecure)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=settings.otlp_endpoint)


# -- the OpenTelemetry implementation (tracing on) -------------------------------------------------------------
class _OtelTracer(RequestTracer):
    __slots__ = ("_propagator", "_provider", "_tracer")

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("llmserve.gateway")
        self._propagator = TraceContextTextMapPropagator()

    def request(self, route: str, headers: IncomingHeaders = ()) -> RequestSpan:
        from opentelemetry.trace import SpanKind

        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(route, context=parent, kind=SpanKind.SERVER, attributes={ROUTE: route})
        return _OtelRequestSpan(self, span)

    def close(self) -> None:
        self._provider.shutdown()


class _OtelSpan(Span):
    __slots__ = ("_ended", "_span", "_tracer")

    def __init__(self, tracer: _OtelTracer, span: OtelSpan) -> None:
        self._tracer = tracer
        self._span = span
        self._ended = False

    def _child(self, name: str, attributes: dict[str, Any], *, client: bool = False) -> _OtelSpan:
        from opentelemetry.trace import SpanKind, set_span_in_context

        span = self._tracer._tracer.start_span(
            name,
            context=set_span_in_context(self._span),
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes=attributes,
        )
        return _OtelSpan(self._tracer, span)

    def step(self, name: str, kind: str) -> Span:
        return self._child(f"step {name}", {STEP: name, STEP_KIND: kind})

    def upstream(self, replica: str, url: str, attempt: int = 1) -> Span:
        host = url.split("://", 1)[-1].split("/", 1)[0]
        return self._child("upstream", {REPLICA: replica, URL: url, SERVER_ADDRESS: host, ATTEMPT: attempt},
                           client=True)  # fmt: skip

    def answered(self, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute(STATUS, status)
        if status >= 500:
            self._span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            self._span.set_attribute(ERROR_TYPE, str(status))

    def inject(self, headers: Headers) -> Headers:
        from opentelemetry.trace import set_span_in_context

        carrier: dict[str, str] = {}
        self._tracer._propagator.inject(carrier, context=set_span_in_context(self._span))
        return [*headers, *((k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items())]

    def end(self, status: int | None = None, error: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        from opentelemetry.trace import Status, StatusCode

        if status is not None:
            self._span.set_attribute(STATUS, status)
        if (error is not None and status is None) or (status is not None and status >= 500):
            message = error or f"HTTP {status}"
            self._span.set_status(Status(StatusCode.ERROR, message))
            self._span.set_attribute(ERROR_TYPE, str(status) if status is not None else "error")
        elif error is not None:  # a 4xx: the client's mistake, not the span's error (OpenTelemetry's HTTP rule)
            self._span.set_attribute(ERROR_MESSAGE, error)
        self._span.end()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not self._ended:
            self._span.record_exception(exc)
            self.end(error=f"{type(exc).__name__}: {exc}")
        self.end()


class _OtelRequestSpan(_OtelSpan, RequestSpan):
    __slots__ = ("_routing", "_started", "_upstream")

    def __init__(self, tracer: _OtelTracer, span: OtelSpan) -> None:
        super().__init__(tracer, span)
        self._started = time.perf_counter()
        self._routing: _OtelSpan | None = None
        self._upstream: _OtelSpan | None = None

    def upstream(self, replica: str, url: str, attempt: int = 1) -> Span:
        call = super().upstream(replica, url, attempt)
        self._upstream = call if isinstance(call, _OtelSpan) else None
        return call

    def step_request(self, name: str, kind: str) -> RequestSpan:
        return _OtelRequestSpan(self._tracer, self._child(f"step {name}", {STEP: name, STEP_KIND: kind})._span)

    def resolved(self, *, model: str, service: str, tenant: str | None = None, stream: bool = False) -> None:
        attributes: dict[str, Any] = {MODEL: model, SERVICE: service, STREAM: stream}
        if tenant is not None:
            attributes[TENANT] = tenant
        self._span.set_attributes(attributes)

    def held(self) -> Span:
        return _HeldSpan(self, self._child("activator.wait", {}))

    def routing(self) -> Span:
        self._routing = self._child("routing", {})
        return self._routing

    def routed(
        self,
        *,
        replica: str,
        revision: str | None = None,
        profile: str | None = None,
        scorer: str | None = None,
        prefix_hit: float | None = None,
    ) -> None:
        given = {REPLICA: replica, REVISION: revision, PROFILE: profile, SCORER: scorer, PREFIX_HIT: prefix_hit}
        attributes = {k: v for k, v in given.items() if v is not None}
        self._span.set_attributes(attributes)
        if self._routing is not None and not self._routing._ended:
            self._routing._span.set_attributes(attributes)

    def first_token(self) -> None:
        if not self._span.is_recording():
            return
        self._span.set_attribute(TTFT, time.perf_counter() - self._started)
        self._span.add_event("first_token")

    def usage(self, *, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        if prompt_tokens is not None:
            self._span.set_attribute(INPUT_TOKENS, prompt_tokens)
        if completion_tokens is not None:
            self._span.set_attribute(OUTPUT_TOKENS, completion_tokens)

    def finish(self, status: int, error: str | None = None) -> None:
        if self._upstream is not None:  # the response has been relayed: the last upstream call ends with it
            self._upstream.end()
        self.end(status, error)


class _HeldSpan(Span):
    """activator.wait, which also tells the request span how long it waited."""

    __slots__ = ("_request", "_span", "_started")

    def __init__(self, request: _OtelRequestSpan, span: _OtelSpan) -> None:
        self._request = request
        self._span = span
        self._started = time.perf_counter()

    def end(self, status: int | None = None, error: str | None = None) -> None:
        if not self._span._ended:
            self._request._span.set_attribute(HELD_S, time.perf_counter() - self._started)
        self._span.end(status, error)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.end(error=f"{type(exc).__name__}: {exc}" if exc is not None else None)
