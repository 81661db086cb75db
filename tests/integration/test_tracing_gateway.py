"""Tracing through the real gateway (build_gateway, real HTTP) with the OpenTelemetry SDK's in-memory exporter:
simulated vLLM workers (which record the traceparent they receive) and a real V2 runtime process behind it.

One SERVER span per request with the attributes operators filter on, child spans for the activator wait, the
routing decision and each upstream call, no span per SSE chunk, and the upstream span's context at the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import Gateway as GatewayParts
from gateway.app import build_gateway
from gateway.graph.source import StaticGraphs
from gateway.settings import GatewaySettings
from gateway.tracing import TracingSettings, build_tracer
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb
from llmserve.spec.graph import InferenceGraph
from llmserve.workers.processes import free_port
from llmserve.workers.sim.app import SimServer, create_app
from llmserve.workers.sim.clock import RealClock
from tests.support import v2_models
from tests.support.servers import ServerThread, serving
from tests.support.v2_runtime import RuntimeProcess, runtime_process
from tests.support.waiting import eventually

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
DOCUMENT = "A shared document about observability, tracing and the prefix cache. " * 12
INFER = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
TWICE = InferenceGraph.model_validate({  # two steps on the V2 service, the second on the request again
    "apiVersion": "serving.llmserve.io/v1alpha1",
    "kind": "InferenceGraph",
    "metadata": {"name": "twice"},
    "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [
        {"name": "first", "serviceName": "iris"},
        {"name": "again", "serviceName": "iris", "data": "$request"},
    ]}}},
})  # fmt: skip


@dataclass
class Traced:
    gateway: ServerThread
    parts: GatewayParts
    registry: EndpointRegistry
    exporter: InMemorySpanExporter
    sims: dict[str, tuple[SimServer, ServerThread]]
    grpc_target: str

    @property
    def url(self) -> str:
        return self.gateway.url

    def trace(self, root: ReadableSpan) -> list[ReadableSpan]:
        """Every finished span of `root`'s trace."""
        return [s for s in self.exporter.get_finished_spans() if s.context.trace_id == root.context.trace_id]

    def request_span(self, name: str, count: int = 1) -> list[ReadableSpan]:
        """The finished SERVER spans named `name` once there are `count` of them (they end just after the
        client's last byte)."""
        assert eventually(lambda: len(self._servers(name)) >= count), self.exporter.get_finished_spans()
        return self._servers(name)

    def _servers(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name and s.kind is SpanKind.SERVER]


def sim() -> SimServer:
    return create_app("chat", clock=RealClock(50.0))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    work = tmp_path_factory.mktemp("traced-v2")
    iris = v2_models.sklearn_iris(work / "iris")
    with runtime_process(["--model", f"iris={iris.path}:sklearn"], work / "runtime.log") as process:
        yield process


@pytest.fixture(scope="module")
def traced(runtime: RuntimeProcess) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    registry.declare_service(ServiceInfo(name="cold", model_name="cold", min_replicas=0))
    registry.declare_service(ServiceInfo(name="iris", model_name="iris", protocol="v2"))
    registry.publish(Endpoint("iris", "iris-0", runtime.url, runtime.grpc_target, revision="iris-00001"))
    with ExitStack() as stack:
        sims = {}
        for name in ("chat-0", "chat-1", "cold-0"):
            app = create_app("cold" if name.startswith("cold") else "chat", clock=RealClock(50.0))
            sims[name] = (app, stack.enter_context(serving(app)))
        for name in ("chat-0", "chat-1"):
            registry.publish(Endpoint("chat", name, sims[name][1].url, revision="chat-00001"))
        settings = GatewaySettings(grpc_port=free_port(), activator_timeout_s=30)
        tracer = build_tracer(TracingSettings(), exporter=exporter)
        parts = build_gateway(settings, registry, tracer=tracer, graphs=StaticGraphs([TWICE]))
        server = stack.enter_context(serving(parts.app))
        yield Traced(server, parts, registry, exporter, sims, f"127.0.0.1:{settings.grpc_port}")


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id}


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def received(traced: Traced, replica: str) -> list[dict[str, Any]]:
    return list(traced.sims[replica][0].traceparents)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], "max_tokens": 12, **extra}


def test_a_streamed_chat_is_one_span_with_routing_and_upstream_children_and_its_trace_reaches_the_worker(
    traced: Traced,
) -> None:
    client_parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    body = chat(DOCUMENT + "First question?", stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{traced.url}/v1/chat/completions", json=body,
                      headers={"traceparent": client_parent}, timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        frames = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(frames) > 5

    (span,) = traced.request_span("chat_completions")
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CLIENT_TRACE  # joined the client's trace
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == CLIENT_SPAN
    got = attrs(span)
    assert got["gen_ai.request.model"] == "chat"
    assert got["llmserve.service"] == "chat"
    assert got["llmserve.stream"] is True
    assert got["llmserve.replica"] in ("chat-0", "chat-1")
    assert got["llmserve.revision"] == "chat-00001"
    assert got["llmserve.routing.profile"] == "token-aware"
    assert got["llmserve.routing.scorer"]
    assert got["http.response.status_code"] == 200
    assert got["gen_ai.usage.output_tokens"] == 12
    assert got["gen_ai.usage.input_tokens"] > 0
    assert span.end_time is not None
    assert span.start_time is not None
    assert 0 < got["gen_ai.latency.time_to_first_token"] < (span.end_time - span.start_time) / 1e9
    assert [e.name for e in span.events] == ["first_token"]

    spans = traced.trace(span)
    assert len(spans) == 3, [s.name for s in spans]  # no span per SSE chunk
    kids = children(spans, span)
    assert set(kids) == {"routing", "upstream"}
    upstream = kids["upstream"]
    assert upstream.kind is SpanKind.CLIENT
    assert attrs(upstream)["llmserve.replica"] == got["llmserve.replica"]
    assert attrs(upstream)["http.response.status_code"] == 200
    assert upstream.end_time is not None
    assert span.end_time is not None
    assert upstream.end_time <= span.end_time
    assert attrs(kids["routing"])["llmserve.replica"] == got["llmserve.replica"]

    at_worker = received(traced, got["llmserve.replica"])[-1]["traceparent"]
    assert at_worker == f"00-{CLIENT_TRACE}-{format(upstream.context.span_id, '016x')}-01"


def test_the_same_prefix_again_carries_a_prefix_hit_estimate(traced: Traced) -> None:
    before = len(traced.request_span("chat_completions", 0))
    for question in ("Second question?", "Third question?"):
        answer = httpx.post(f"{traced.url}/v1/chat/completions", json=chat(DOCUMENT + question), timeout=30)
        assert answer.status_code == 200
    spans = traced.request_span("chat_completions", before + 2)
    last = attrs(spans[-1])
    assert last["llmserve.routing.prefix_hit"] > 0.5  # the document is cached where the first request went
    assert last["llmserve.stream"] is False


def test_a_held_cold_start_has_an_activator_wait_child(traced: Traced) -> None:
    answers: list[httpx.Response] = []
    body = {"model": "cold", "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 4}
    caller = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{traced.url}/v1/chat/completions", json=body, timeout=30)))  # fmt: skip
    caller.start()
    assert eventually(lambda: traced.gateway.call(traced.parts.activator.held, "cold") == 1)
    traced.gateway.call(traced.registry.publish, Endpoint("cold", "cold-0", traced.sims["cold-0"][1].url))
    caller.join(30)
    assert answers
    assert answers[0].status_code == 200

    span = next(s for s in traced.request_span("chat_completions") if attrs(s)["llmserve.service"] == "cold")
    kids = children(traced.trace(span), span)
    assert set(kids) == {"activator.wait", "routing", "upstream"}
    wait = kids["activator.wait"]
    assert wait.end_time is not None
    assert wait.start_time is not None
    assert kids["routing"].start_time is not None
    assert wait.end_time <= kids["routing"].start_time
    assert attrs(span)["llmserve.activator.held_s"] > 0
    assert attrs(span)["llmserve.routing.scorer"] == "only-replica"
    assert received(traced, "cold-0")[-1]["traceparent"].split("-")[2] == format(
        kids["upstream"].context.span_id, "016x"
    )


def test_a_v2_request_is_traced(traced: Traced) -> None:
    answer = httpx.post(f"{traced.url}/v2/models/iris/infer", json=INFER, timeout=30)
    assert answer.status_code == 200
    (span,) = traced.request_span("v2_infer")
    got = attrs(span)
    assert (got["gen_ai.request.model"], got["llmserve.service"], got["llmserve.stream"]) == ("iris", "iris", False)
    assert (got["llmserve.replica"], got["llmserve.revision"]) == ("iris-0", "iris-00001")
    assert got["llmserve.routing.profile"] == "least-request"
    assert got["http.response.status_code"] == 200
    assert set(children(traced.trace(span), span)) == {"routing", "upstream"}

    missing = httpx.post(f"{traced.url}/v2/models/nothing/infer", json=INFER, timeout=30)
    assert missing.status_code == 404
    (span_404,) = [s for s in traced.request_span("v2_infer", 2) if s is not span and s.name == "v2_infer"][-1:]
    assert attrs(span_404)["http.response.status_code"] == 404
    assert span_404.status.status_code is not StatusCode.ERROR  # a client's mistake is not the server's error


def test_a_grpc_infer_is_traced(traced: Traced) -> None:
    request = pb.ModelInferRequest(model_name="iris", id="g-1")
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    with grpc.insecure_channel(traced.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)  # fmt: skip
        call(request, timeout=30, metadata=(("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),))
    (span,) = [s for s in traced.request_span("grpc_infer") if format(s.context.trace_id, "032x") == CLIENT_TRACE]
    assert attrs(span)["llmserve.replica"] == "iris-0"
    assert set(children(traced.trace(span), span)) == {"routing", "upstream"}


def test_the_new_series_are_on_metrics(traced: Traced) -> None:
    httpx.post(f"{traced.url}/v1/chat/completions", json=chat("metrics, please", stream=True), timeout=30)
    text = httpx.get(f"{traced.url}/metrics", timeout=10).text
    assert 'llmserve_inter_token_latency_seconds_count{model="chat",route="chat_completions"}' in text
    assert 'llmserve_routing_decisions_total{profile="token-aware",scorer=' in text
    assert 'llmserve_routing_prompt_tokens_total{service="chat"}' in text
    assert 'llmserve_routing_prefix_hit_tokens_total{service="chat"}' in text
    assert 'llmserve_replica_in_flight{replica="chat-0",service="chat"} 0.0' in text
    assert 'revision="chat-00001",route="chat_completions",service="chat",status="200"' in text
    assert 'llmserve_activator_queue_depth{service="iris"} 0.0' in text  # declared: there at 0


def test_off_no_span_and_no_traceparent() -> None:
    app = sim()
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    with serving(app) as worker:
        registry.publish(Endpoint("chat", "chat-0", worker.url))
        parts = build_gateway(GatewaySettings(), registry)
        with serving(parts.app) as gateway:
            answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat("untraced"), timeout=30)
    assert answer.status_code == 200
    assert parts.tracer is not None
    assert not parts.tracer.enabled
    assert list(app.traceparents) == []


def test_a_graph_is_one_span_with_a_child_per_step_and_each_steps_dispatch_beneath_it(traced: Traced) -> None:
    answer = httpx.post(f"{traced.url}/v1/graphs/twice", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
    assert answer.status_code == 200, answer.text
    (span,) = traced.request_span("graph")
    assert attrs(span)["llmserve.service"] == "twice"
    assert attrs(span)["http.response.status_code"] == 200
    spans = traced.trace(span)
    steps = sorted((s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id),
                   key=lambda s: s.start_time or 0)  # fmt: skip
    assert [attrs(s)["llmserve.graph.step"] for s in steps] == [
        "step root.steps[0] (first) -> iris", "step root.steps[1] (again) -> iris"]  # fmt: skip
    for step in steps:
        got = attrs(step)
        assert got["llmserve.graph.router_type"] == "Sequence"
        assert got["llmserve.service"] == "iris"
        assert got["llmserve.replica"] == "iris-0"
        assert got["http.response.status_code"] == 200
        kids = children(spans, step)
        assert set(kids) == {"routing", "upstream"}
        assert attrs(kids["upstream"])["llmserve.replica"] == "iris-0"
        assert step.end_time is not None
        assert span.end_time is not None
        assert step.end_time <= span.end_time
