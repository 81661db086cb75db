"""The gateway over real HTTP, in front of fake workers, called with the real openai SDK and httpx."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from pydantic import SecretStr

from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, ServiceInfo
from tests.support.gateway import Stack, gateway_stack
from tests.support.waiting import eventually

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    settings = GatewaySettings(default_routing_profile="round-robin", activator_timeout_s=0.5)
    with gateway_stack(
        workers=2, models=("m", "break-stream", "boom-500", "reset", "no-embeddings"), settings=settings
    ) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def test_chat_round_robin_and_request_ids(stack: Stack, client: openai.OpenAI) -> None:
    before = [len(w.requests) for w in stack.workers]
    answers = [client.chat.completions.create(model="m", messages=MESSAGES) for _ in range(4)]
    assert {a.choices[0].message.content for a in answers} == {"hello from w0", "hello from w1"}
    assert [len(w.requests) - b for w, b in zip(stack.workers, before, strict=True)] == [2, 2]
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert len(raw.headers["x-request-id"]) == 22  # 12 random hex digits + a 10-digit counter
    forwarded = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers={"x-request-id": "abc-123"},
    )
    assert forwarded.headers["x-request-id"] == "abc-123"
    assert any(h.get("x-request-id") == "abc-123" for w in stack.workers for h in w.headers)


def test_body_is_forwarded_unchanged(stack: Stack) -> None:
    body = {
        "model": "m",
        "messages": MESSAGES,
        "n": 2,
        "stop": ["\n", "END"],
        "max_tokens": 7,
        "temperature": 0.3,
        "some_future_openai_field": {"nested": [1, 2]},
    }
    response = httpx.post(f"{stack.url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert len(response.json()["choices"]) == 2
    assert any(request == body for w in stack.workers for request in w.requests)


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, max_tokens=5, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks[1:5]] == ["t1 ", "t2 ", "t3 ", "t4 "]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    assert client.completions.create(model="m", prompt="say").choices[0].text.startswith("hello from")
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="x", stream=True))
    assert streamed == "t0 t1 t2 t3 "


def test_stream_is_relayed_before_the_worker_finishes(stack: Stack) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 3, "x_delay_ms": 1500}
    done_before = sum(w.completed_streams for w in stack.workers)
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(lines)
        # The worker is still pausing between chunks: nothing was held back waiting for the end.
        assert first.startswith("data: {")
        assert sum(w.completed_streams for w in stack.workers) == done_before
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) == 3


def test_client_disconnect_aborts_the_upstream_stream(stack: Stack) -> None:
    aborted = sum(w.aborted_streams for w in stack.workers)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 1000, "x_delay_ms": 20}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert eventually(lambda: sum(w.active_streams for w in stack.workers) == 1)
    # The client hung up: the gateway closes its upstream connection and the worker stops generating.
    assert eventually(lambda: sum(w.aborted_streams for w in stack.workers) == aborted + 1)
    assert eventually(lambda: sum(w.active_streams for w in stack.workers) == 0)


def test_unknown_model_is_404_with_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{oops", "could not parse the JSON"),
        (b'{"model": "m", "messages": "hi"}', "'messages'"),
        (b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": "ten"}', "'max_tokens'"),
        (b'{"model": "m", "messages": [{"role": "user"}], "stream": 1}', "'stream'"),
    ],
)
def test_bad_bodies_are_400_in_openai_envelope(stack: Stack, content: bytes, fragment: str) -> None:
    response = httpx.post(
        f"{stack.url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]


def test_sdk_sees_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=-5)


def test_body_over_the_limit_is_413() -> None:
    with gateway_stack(settings=GatewaySettings(max_body_bytes=1000)) as small:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
        response = httpx.post(f"{small.url}/v1/chat/completions", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            yield b'{"model": "m", "messages": [{"role": "user", "content": "'
            yield b"y" * 2000
            yield b'"}]}'

        response = httpx.post(f"{small.url}/v1/chat/completions", content=chunks())
        assert response.status_code == 413
        ok = httpx.post(f"{small.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert ok.status_code == 200


def test_no_ready_replica_after_the_activator_deadline_is_503(stack: Stack, client: openai.OpenAI) -> None:
    stack.on_loop(stack.registry.declare_service, ServiceInfo(name="cold", model_name="cold", min_replicas=0))
    response = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": "cold", "messages": MESSAGES})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "no_ready_replica"
    assert "within 0.5 s" in response.json()["error"]["message"]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="cold", messages=MESSAGES)


@pytest.mark.parametrize("model", ["boom-500", "reset"])
def test_worker_failures_are_502(stack: Stack, model: str) -> None:
    response = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": model, "messages": MESSAGES})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert response.json()["error"]["type"] == "server_error"


def test_stream_broken_mid_way_ends_with_an_error_frame(stack: Stack, client: openai.OpenAI) -> None:
    body = {"model": "break-stream", "messages": MESSAGES, "stream": True, "max_tokens": 10}
    text = httpx.post(f"{stack.url}/v1/chat/completions", json=body).text
    frames = [f for f in text.split("\n\n") if f]
    assert frames[0].startswith("data: {")
    assert '"error"' in frames[-2]
    assert frames[-1] == "data: [DONE]"
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="break-stream", messages=MESSAGES, stream=True, max_tokens=10))


def test_unreachable_replica_is_ejected_and_never_a_502() -> None:
    settings = GatewaySettings(default_routing_profile="round-robin", activator_timeout_s=30)
    with gateway_stack(workers=1, settings=settings) as s:
        dead = Endpoint(service="m", replica_id="m-dead", url="http://127.0.0.1:9")
        s.on_loop(s.registry.publish, dead)
        for _ in range(4):  # the dead one is tried at most once: refused, ejected, the request goes elsewhere
            response = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
            assert response.status_code == 200
        assert [e.replica_id for e in s.on_loop(s.parts.endpoints.ready_endpoints, "m")] == ["m-0"]  # type: ignore[attr-defined]
        live = s.registry.ready_endpoints("m")[0]
        s.on_loop(s.registry.unpublish, "m", "m-0")
        # Only the dead replica is listed now: a request waits for a live one instead of failing.
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                httpx.post, f"{s.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=30
            )
            assert eventually(lambda: s.on_loop(s.parts.activator.held, "m") == 1)
            s.on_loop(s.registry.publish, live)
            assert waiting.result().status_code == 200


def test_an_engine_dead_answer_is_the_gateways_502_and_the_replica_is_ejected() -> None:
    with gateway_stack(workers=2, models=("engine-dead",)) as s:
        response = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "engine-dead", "messages": MESSAGES})
        assert response.status_code == 502
        assert response.headers["retry-after"] == "5"
        error = response.json()["error"]
        assert error["code"] == "worker_engine_dead"
        assert "EngineCore" not in error["message"]  # the gateway's own words, not the worker's internals
        ready = s.on_loop(s.parts.endpoints.ready_endpoints, "engine-dead")
        assert len(ready) == 1  # the replica that answered it is out of rotation here  # type: ignore[arg-type]


def test_embeddings_are_forwarded(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="m", input=["a", "b"])
    assert len(result.data) == 2
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="no-embeddings", input="a")
    assert "does not serve /v1/embeddings" in str(info.value)


def test_models_listing_and_retrieval(stack: Stack, client: openai.OpenAI, openai_schemas: object) -> None:
    listing = httpx.get(f"{stack.url}/v1/models").json()
    openai_schemas.check("ListModelsResponse", listing)  # type: ignore[attr-defined]
    assert {"m", "reset"} <= {card["id"] for card in listing["data"]}
    assert client.models.retrieve("m").owned_by == "llmserve"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_framework_errors_use_the_envelope(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/v1/chat/completions")
    assert response.status_code == 405
    assert "not allowed" in response.json()["error"]["message"]
    response = httpx.post(f"{stack.url}/v1/unknown")
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("Unknown request URL")


def test_metrics_count_requests_ttft_and_tokens(stack: Stack, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="m", messages=MESSAGES)
    list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True, max_tokens=3))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="not-served", messages=MESSAGES)
    text = httpx.get(f"{stack.url}/metrics").text
    assert 'llmserve_requests_total{model="m",revision="",route="chat_completions",service="m",status="200"}' in text
    assert (
        'llmserve_requests_total{model="__unknown__",revision="",route="chat_completions",service="",status="404"}'
    ) in text
    assert 'llmserve_time_to_first_token_seconds_count{model="m",route="chat_completions"}' in text
    assert 'llmserve_tokens_total{kind="prompt",model="m"}' in text
    assert 'llmserve_requests_in_flight{model="m"} 0.0' in text
    assert "not-served" not in text


def test_readiness_reports_services_without_replicas(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/health").json() == {"status": "ok"}
    stack.on_loop(stack.registry.declare_service, ServiceInfo(name="pending", model_name="pending"))
    response = httpx.get(f"{stack.url}/ready")
    assert response.status_code == 503
    assert response.json()["waiting_for"] == ["pending"]
    stack.on_loop(stack.registry.withdraw_service, "pending")
    assert httpx.get(f"{stack.url}/ready").status_code == 200


def test_api_keys() -> None:
    settings = GatewaySettings(api_keys=(SecretStr("key-one"), SecretStr("key-two")))
    with gateway_stack(settings=settings) as s:
        body = {"model": "m", "messages": MESSAGES}
        assert httpx.post(f"{s.url}/v1/chat/completions", json=body).status_code == 401
        wrong = httpx.post(f"{s.url}/v1/chat/completions", json=body, headers={"authorization": "Bearer key-three"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        for key in ("key-one", "key-two"):
            ok = httpx.post(f"{s.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        for path in ("/v1/models", "/metrics"):
            assert httpx.get(f"{s.url}{path}").status_code == 401
        for path in ("/health", "/ready"):
            assert httpx.get(f"{s.url}{path}").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{s.url}/v1", api_key="bad", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{s.url}/v1", api_key="key-two", max_retries=0)
        assert good.chat.completions.create(model="m", messages=MESSAGES).choices
