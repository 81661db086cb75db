"""gateway/tracing.py with the OpenTelemetry SDK's in-memory exporter; the traceparent it injects crosses a real
HTTP hop (the gateway's own upstream client) to a worker stand-in that records it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway import tracing
from gateway.tracing import NO_REQUEST_SPAN, NO_SPAN, NO_TRACING, RequestTracer, TracingSettings, build_tracer
from gateway.upstream import UpstreamPool
from tests.conftest import REPO
from tests.support.servers import serving

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def exported() -> Iterator[tuple[RequestTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracer = build_tracer(TracingSettings(), exporter=exporter)
    yield tracer, exporter
    tracer.close()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def traceparent(headers: list[tuple[bytes, bytes]]) -> str:
    return dict(headers)[b"traceparent"].decode()


async def lifespan(receive: Any, send: Any) -> None:
    """A plain ASGI app's side of uvicorn's lifespan protocol: startup, then shutdown."""
    while True:
        message = (await receive())["type"]
        await send({"type": f"{message}.complete"})
        if message == "lifespan.shutdown":
            return


# -- settings -------------------------------------------------------------------------------------------------------
def test_off_without_an_endpoint_or_otel_variables() -> None:
    settings = TracingSettings.from_environment({"PATH": "/bin", "HOME": "/root"})
    assert not settings.enabled
    assert build_tracer(settings) is NO_TRACING


@pytest.mark.parametrize(
    ("environ", "cli", "endpoint", "protocol"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, None, "http://collector:4317", "grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, None,
         "http://c:4318/v1/traces", "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://g:1",
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, None, "http://t:4318/custom", "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, None, "http://localhost:4317", "grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317"}, "http://cli:4317", "http://cli:4317", "grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317", "OTEL_SDK_DISABLED": "true"}, None, None, "grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317", "OTEL_TRACES_EXPORTER": "none"}, None, None, "grpc"),
    ],
)  # fmt: skip
def test_settings_from_the_standard_variables(
    environ: dict[str, str], cli: str | None, endpoint: str | None, protocol: str
) -> None:
    settings = TracingSettings.from_environment(environ, otlp_endpoint=cli)
    assert settings.otlp_endpoint == endpoint
    assert settings.protocol == protocol


def test_service_name_sampler_and_tls_from_the_variables() -> None:
    settings = TracingSettings.from_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317", "OTEL_SERVICE_NAME": "edge-gw",
         "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )  # fmt: skip
    assert (settings.service_name, settings.sample_ratio, settings.insecure) == ("edge-gw", 0.25, False)
    assert TracingSettings.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).insecure
    with pytest.raises(ValueError, match="http/json"):
        TracingSettings.from_environment({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_gateway_starts_without_opentelemetry_when_off() -> None:
    """Off, nothing imports opentelemetry: the gateway runs without the tracing extra."""
    code = (
        "import sys; from gateway.tracing import TracingSettings, build_tracer\n"
        "t = build_tracer(TracingSettings.from_environment({}))\n"
        "s = t.request('chat_completions', [(b'traceparent', b'00-' + b'1' * 32 + b'-' + b'2' * 16 + b'-01')])\n"
        "s.resolved(model='m', service='m'); s.routed(replica='m-0'); s.first_token(); s.finish(200)\n"
        "with s.held(), s.routing(), s.upstream('m-0', 'http://h:1') as u: h = u.inject([(b'a', b'b')])\n"
        "assert h == [(b'a', b'b')], h\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'opentelemetry imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_off_every_call_returns_the_shared_no_op_objects() -> None:
    span = NO_TRACING.request("chat_completions")
    assert span is NO_REQUEST_SPAN
    assert span.held() is NO_SPAN
    assert span.routing() is NO_SPAN
    assert span.upstream("r", "http://h:1") is NO_SPAN
    assert span.step("s", "Sequence").step("t", "Switch") is NO_SPAN
    headers = [(b"content-type", b"application/json")]
    assert span.upstream("r", "http://h:1").inject(headers) is headers


# -- spans ------------------------------------------------------------------------------------------------------
def test_a_streamed_chat_request(exported: tuple[RequestTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = exported
    span = tracer.request("chat_completions", [(b"content-type", b"application/json")])
    span.resolved(model="smollm2", service="smollm2", tenant="team-a", stream=True)
    with span.routing():
        span.routed(replica="smollm2-1", revision="smollm2-r2", profile="token-aware", scorer="prefix-cache",
                    prefix_hit=0.75)  # fmt: skip
    with span.upstream("smollm2-1", "http://127.0.0.1:9001") as call:
        headers = call.inject([(b"content-type", b"application/json")])
    for _ in range(50):  # chunks relayed: no span each
        pass
    span.first_token()
    span.usage(prompt_tokens=812, completion_tokens=64)
    span.finish(200)

    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["chat_completions", "routing", "upstream"]
    named = by_name(spans)
    request, routing, upstream = named["chat_completions"], named["routing"], named["upstream"]
    assert request.kind is SpanKind.SERVER
    assert request.parent is None
    attributes = dict(request.attributes or {})
    ttft = attributes.pop(tracing.TTFT)
    assert isinstance(ttft, float)
    assert ttft >= 0
    assert attributes == {
        tracing.ROUTE: "chat_completions", tracing.MODEL: "smollm2", tracing.SERVICE: "smollm2",
        tracing.TENANT: "team-a", tracing.STREAM: True, tracing.REPLICA: "smollm2-1",
        tracing.REVISION: "smollm2-r2", tracing.PROFILE: "token-aware", tracing.SCORER: "prefix-cache",
        tracing.PREFIX_HIT: 0.75, tracing.INPUT_TOKENS: 812, tracing.OUTPUT_TOKENS: 64, tracing.STATUS: 200,
    }  # fmt: skip
    assert [e.name for e in request.events] == ["first_token"]
    assert request.status.status_code is StatusCode.UNSET
    for child in (routing, upstream):
        assert child.parent is not None
        assert child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id
    assert routing.attributes is not None
    assert routing.attributes[tracing.SCORER] == "prefix-cache"
    assert upstream.kind is SpanKind.CLIENT
    assert upstream.attributes is not None
    assert upstream.attributes[tracing.SERVER_ADDRESS] == "127.0.0.1:9001"
    # the worker's own span becomes a child of the upstream call
    version, trace_id, parent_id, flags = traceparent(headers).split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == request.context.trace_id
    assert int(parent_id, 16) == upstream.context.span_id


def test_a_held_cold_start_request(exported: tuple[RequestTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = exported
    span = tracer.request("chat_completions")
    span.resolved(model="cold", service="cold")
    with span.held():
        pass  # the activator waits for the first replica here
    with span.routing():
        span.routed(replica="cold-0", profile="token-aware", scorer="least-request")
    with span.upstream("cold-0", "http://127.0.0.1:9002"):
        pass
    span.finish(200)
    named = by_name(exporter.get_finished_spans())
    assert set(named) == {"chat_completions", "activator.wait", "routing", "upstream"}
    wait = named["activator.wait"]
    assert wait.parent is not None
    assert wait.parent.span_id == named["chat_completions"].context.span_id
    attributes = named["chat_completions"].attributes or {}
    held = attributes[tracing.HELD_S]
    assert isinstance(held, float)
    assert wait.end_time is not None
    assert wait.start_time is not None
    assert held <= (wait.end_time - wait.start_time) / 1e9 + 0.01
    assert tracing.PREFIX_HIT not in attributes  # not given: not recorded as None


def test_a_v2_request_and_a_client_traceparent(exported: tuple[RequestTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = exported
    incoming = [(b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()), (b"tracestate", b"vendor=x")]
    span = tracer.request("v2_infer", incoming)
    span.resolved(model="iris", service="iris")
    with span.upstream("iris-0", "http://127.0.0.1:9003") as call:
        headers = call.inject([])
    span.finish(200)
    named = by_name(exporter.get_finished_spans())
    request = named["v2_infer"]
    assert request.context.trace_id == int(CLIENT_TRACE, 16)  # the client's trace goes on through the gateway
    assert request.parent is not None
    assert request.parent.span_id == int(CLIENT_SPAN, 16)
    assert tracing.TTFT not in (request.attributes or {})
    assert traceparent(headers).split("-")[1] == CLIENT_TRACE
    assert dict(headers)[b"tracestate"] == b"vendor=x"


def test_graph_steps_are_children_with_their_own_upstream_calls(
    exported: tuple[RequestTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = exported
    span = tracer.request("v2_infer")
    with span.step("preprocess", "Sequence") as first, first.upstream("pre-0", "http://127.0.0.1:9004"):
        pass
    with span.step("classify", "Sequence") as second, second.step("pick", "Switch") as nested:
        nested.upstream("cls-1", "http://127.0.0.1:9005").end(200)
    span.finish(200)
    spans = exporter.get_finished_spans()
    ids = {s.context.span_id: s for s in spans}

    def parent_name(span: ReadableSpan) -> str | None:
        return ids[span.parent.span_id].name if span.parent is not None else None

    parents = sorted((s.name, parent_name(s)) for s in spans)
    assert parents == [
        ("step classify", "v2_infer"), ("step pick", "step classify"), ("step preprocess", "v2_infer"),
        ("upstream", "step pick"), ("upstream", "step preprocess"), ("v2_infer", None),
    ]  # fmt: skip
    step = by_name(spans)["step pick"]
    assert step.attributes is not None
    assert step.attributes[tracing.STEP_KIND] == "Switch"


def test_errors_mark_the_span(exported: tuple[RequestTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = exported
    bad_input = tracer.request("chat_completions")
    bad_input.finish(400)
    failed = tracer.request("chat_completions")
    with pytest.raises(ConnectionError), failed.upstream("m-0", "http://127.0.0.1:9006"):
        raise ConnectionError("refused")
    failed.finish(502, "worker unreachable")
    failed.finish(200)  # a second finish changes nothing
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans].count("chat_completions") == 2
    client_error, upstream, server_error = spans
    assert client_error.status.status_code is StatusCode.UNSET  # 4xx: the server did nothing wrong
    assert server_error.status.status_code is StatusCode.ERROR
    assert server_error.status.description == "worker unreachable"
    assert (server_error.attributes or {})[tracing.STATUS] == 502
    assert upstream.status.status_code is StatusCode.ERROR
    assert [e.name for e in upstream.events] == ["exception"]


def test_unsampled_traces_record_nothing_and_still_propagate() -> None:
    exporter = InMemorySpanExporter()
    tracer = build_tracer(TracingSettings(sample_ratio=0.0), exporter=exporter)
    span = tracer.request("chat_completions")
    span.first_token()
    with span.upstream("m-0", "http://127.0.0.1:9007") as call:
        headers = call.inject([])
    span.finish(200)
    tracer.close()
    assert exporter.get_finished_spans() == ()
    assert not int(traceparent(headers).split("-")[3], 16) & 1  # the worker learns not to sample either


async def test_traceparent_reaches_the_worker_over_the_gateways_upstream_client(
    exported: tuple[RequestTracer, InMemorySpanExporter],
) -> None:
    seen: list[dict[bytes, bytes]] = []

    async def worker(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        seen.append(dict(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    tracer, exporter = exported
    pool = UpstreamPool(connect_timeout=5, idle_timeout=4)
    with serving(worker) as server:
        span = tracer.request("chat_completions")
        with span.upstream("w-0", server.url) as call:
            headers = call.inject([(b"content-type", b"application/json")])
            response = await pool.request(server.url, b"POST", b"/v1/chat/completions", headers, b"{}")
            await response.read()
        span.finish(response.status)
        await pool.close()
    upstream = by_name(exporter.get_finished_spans())["upstream"]
    received = seen[0][b"traceparent"].decode().split("-")
    assert int(received[1], 16) == upstream.context.trace_id
    assert int(received[2], 16) == upstream.context.span_id


def test_spans_reach_an_otlp_http_collector_when_the_tracer_closes() -> None:
    """The real exporter path: OTLP/HTTP protobuf to a collector stand-in, batched, flushed at close()."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    posts: list[tuple[str, bytes]] = []

    async def collector(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        posts.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    with serving(collector) as server:
        settings = TracingSettings.from_environment(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": server.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
             "OTEL_SERVICE_NAME": "gw-under-test"}
        )  # fmt: skip
        tracer = build_tracer(settings)
        assert tracer.enabled
        span = tracer.request("chat_completions")
        span.resolved(model="m", service="m")
        span.finish(200)
        tracer.close()
    assert [path for path, _ in posts] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(posts[0][1])
    resource = request.resource_spans[0]
    service_name = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    assert service_name == "gw-under-test"
    assert [s.name for s in resource.scope_spans[0].spans] == ["chat_completions"]
