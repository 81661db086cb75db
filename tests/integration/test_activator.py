"""The activator over real HTTP: requests for a service with no ready replica are held, then released."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, ServiceInfo
from tests.support.gateway import Stack, gateway_stack
from tests.support.waiting import eventually

BODY = {"model": "cold", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def stack() -> Iterator[Stack]:
    settings = GatewaySettings(activator_queue_depth=4, activator_timeout_s=20, activator_keepalive_s=0.2)
    with gateway_stack(workers=1, settings=settings, models=("warm",)) as s:
        s.on_loop(s.registry.declare_service, ServiceInfo(name="cold", model_name="cold", min_replicas=0))
        yield s


def held(stack: Stack) -> int:
    return int(stack.on_loop(stack.parts.activator.held, "cold"))  # type: ignore[arg-type]


def publish_cold(stack: Stack) -> None:
    endpoint = Endpoint(service="cold", replica_id="cold-0", url=stack.worker_servers[0].url)
    stack.on_loop(stack.registry.publish, endpoint)


def post(stack: Stack, body: dict[str, object] = BODY, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=timeout)


def test_held_requests_are_all_answered_once_a_replica_is_ready(stack: Stack) -> None:
    woken: list[str] = []
    stack.on_loop(stack.registry.on_wake, woken.append)
    before = len(stack.workers[0].requests)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, stack, {**BODY, "n": i + 1}) for i in range(4)]
        assert eventually(lambda: held(stack) == 4)
        assert woken[:1] == ["cold"]  # the controller was told at once
        publish_cold(stack)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 4
    received = [r["n"] for r in stack.workers[0].requests[before:]]
    assert sorted(received) == [1, 2, 3, 4]  # every held request forwarded exactly once
    assert held(stack) == 0


def test_a_full_queue_answers_503_at_once(stack: Stack) -> None:
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, stack) for _ in range(4)]
        assert eventually(lambda: held(stack) == 4)
        overflow = post(stack, timeout=5)
        assert overflow.status_code == 503
        assert overflow.headers["retry-after"] == "5"
        assert overflow.json()["error"]["code"] == "activator_queue_full"
        publish_cold(stack)
        assert all(f.result().status_code == 200 for f in futures)


def test_deadline_is_503_and_frees_the_slot() -> None:
    settings = GatewaySettings(activator_queue_depth=1, activator_timeout_s=0.3)
    with gateway_stack(workers=1, settings=settings, models=("warm",)) as s:
        s.on_loop(s.registry.declare_service, ServiceInfo(name="cold", model_name="cold", min_replicas=0))
        for _ in range(2):  # the second one proves the first freed its slot
            response = post(s)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "no_ready_replica"
            assert response.headers["retry-after"] == "5"
        assert held(s) == 0
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'llmserve_activator_queue_depth{service="cold"} 0.0' in metrics
        assert 'llmserve_activator_held_seconds_count{service="cold"} 2.0' in metrics


def test_a_client_that_disconnects_leaves_the_queue(stack: Stack) -> None:
    gone = threading.Event()

    def impatient() -> None:
        try:
            httpx.post(f"{stack.url}/v1/chat/completions", json=BODY, timeout=0.5)
        except httpx.ReadTimeout:
            gone.set()

    thread = threading.Thread(target=impatient)
    thread.start()
    assert eventually(lambda: held(stack) == 1)
    thread.join(5)
    assert gone.is_set()
    assert eventually(lambda: held(stack) == 0)
    publish_cold(stack)
    assert stack.workers[0].requests == [] or all(r.get("model") != "cold" for r in stack.workers[0].requests)


def test_streaming_clients_get_keepalives_then_the_stream(stack: Stack) -> None:
    body = {**BODY, "stream": True, "max_tokens": 3}
    lines: list[str] = []
    done: Future[None] = Future()

    def consume() -> None:
        with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
        done.set_result(None)

    thread = threading.Thread(target=consume)
    thread.start()
    assert eventually(lambda: lines.count(": keep-alive") >= 2)  # proxies see traffic while it waits
    publish_cold(stack)
    thread.join(10)
    done.result(0)
    frames = [line for line in lines if line.startswith("data: ")]
    assert len(frames) == 4
    assert frames[-1] == "data: [DONE]"


def test_a_stream_held_past_its_deadline_ends_with_an_error_frame() -> None:
    settings = GatewaySettings(activator_timeout_s=0.5, activator_keepalive_s=0.1)
    with gateway_stack(workers=1, settings=settings, models=("warm",)) as s:
        s.on_loop(s.registry.declare_service, ServiceInfo(name="cold", model_name="cold", min_replicas=0))
        response = post(s, {**BODY, "stream": True})
        assert response.status_code == 200  # committed by the keep-alives
        assert response.text.startswith(": keep-alive")
        assert '"code":"no_ready_replica"' in response.text
        assert response.text.endswith("data: [DONE]\n\n")
