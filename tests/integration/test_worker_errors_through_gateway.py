"""What a client of the gateway sees when a worker answers with an error (the policy: gateway/worker_errors.py,
applied by the dispatch path, gateway/dispatch.py `Dispatcher.worker_error`), before and after a stream started."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from gateway.app import build_gateway, create_app
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from tests.support.scripted_worker import ErrorMidStream, Respond, ScriptedWorker, engine_dead_body
from tests.support.servers import serving

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_errors.json"
CASES = {case["name"]: case for case in json.loads(FIXTURE.read_text())["cases"]}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, ScriptedWorker]]:
    worker = ScriptedWorker("w0")
    registry = EndpointRegistry()
    with ExitStack() as stack:
        server = stack.enter_context(serving(worker))
        registry.declare_service(ServiceInfo(name="m", model_name="m"))
        registry.publish(Endpoint(service="m", replica_id="m-0", url=server.url))
        gateway = stack.enter_context(serving(create_app(GatewaySettings(), registry)))
        yield gateway.url, worker


def through(stack: tuple[str, ScriptedWorker], status: int, body: bytes) -> httpx.Response:
    url, worker = stack
    worker.then(Respond(status, body))
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)


def test_a_context_length_error_reaches_the_client(stack: tuple[str, ScriptedWorker]) -> None:
    answer = through(stack, 400, CASES["context_length_chat"]["body"].encode())
    assert answer.status_code == 400
    assert "maximum context length is 2048 tokens" in answer.json()["error"]["message"]


@pytest.mark.parametrize("name", ["n_over_max_sequences", "message_missing_role", "bad_response_format"])
def test_worker_internals_do_not_reach_the_client(stack: tuple[str, ScriptedWorker], name: str) -> None:
    answer = through(stack, 400, CASES[name]["body"].encode())
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    for internal in ("VLLM_MAX_N_SEQUENCES", "validation error", "MessageParam", "{'type'"):
        assert internal not in message


def test_a_worker_401_is_not_the_clients_401(stack: tuple[str, ScriptedWorker]) -> None:
    """A worker refusing the gateway's credentials is the gateway's failure, not a wrong client key."""
    answer = through(stack, 401, b'{"error": "Unauthorized"}')
    assert answer.status_code == 502


def test_a_worker_500_text_stays_in_the_log(stack: tuple[str, ScriptedWorker]) -> None:
    body = b'{"error": {"message": "CUDA error at /opt/vllm/csrc/attention.cu:42", "type": "InternalServerError"}}'
    answer = through(stack, 500, body)
    assert answer.status_code == 502
    assert "attention.cu" not in answer.text


def test_an_error_event_mid_stream_is_in_the_gateways_words(stack: tuple[str, ScriptedWorker]) -> None:
    url, worker = stack
    payload = b'{"error": {"message": "CUDA error at /opt/vllm/csrc/attention.cu:42", "type": "InternalServerError"}}'
    worker.then(ErrorMidStream(after_chunks=2, payload=payload))
    text = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10).text
    frames = [f for f in text.split("\n\n") if f]
    assert len(frames) == 4  # two chunks, the error, [DONE]
    assert all('"delta"' in f for f in frames[:2])
    error = json.loads(frames[2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_error"
    assert "attention.cu" not in text
    assert frames[3] == "data: [DONE]"


def test_an_engine_that_dies_mid_stream_is_ejected() -> None:
    worker = ScriptedWorker("w0")
    registry = EndpointRegistry()
    with ExitStack() as stack:
        server = stack.enter_context(serving(worker))
        registry.declare_service(ServiceInfo(name="m", model_name="m"))
        registry.publish(Endpoint(service="m", replica_id="m-0", url=server.url))
        parts = build_gateway(GatewaySettings(), registry)
        gateway = stack.enter_context(serving(parts.app))
        dead = json.dumps(json.loads(engine_dead_body())).encode()
        worker.then(ErrorMidStream(after_chunks=1, payload=dead))
        text = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10).text
        assert "EngineCore" not in text
        assert '"worker_engine_dead"' in text
        assert gateway.call(parts.endpoints.ready_endpoints, "m") == ()  # out of rotation on this gateway
