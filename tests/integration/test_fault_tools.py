"""The fault tooling itself (tests/support/fault_proxy.py, tests/support/scripted_worker.py): each fault does what
it says, over real sockets, and the proxy works in front of a gateway's worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from tests.support.fake_worker import FakeWorker
from tests.support.fault_proxy import NO_FAULT, Fault, FaultProxy, fault_proxy
from tests.support.raw_http import RawConnection, request_head
from tests.support.scripted_worker import (
    DelayHeaders,
    EngineDead,
    Normal,
    Reset,
    Respond,
    ScriptedWorker,
    StallMidStream,
    engine_dead_body,
)
from tests.support.servers import ServerThread, serving
from tests.support.waiting import eventually

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True, "max_tokens": 4}
QUIET_S = 0.5  # how long "nothing happens" is watched for


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[ServerThread, FakeWorker]]:
    fake = FakeWorker("w0")
    with serving(fake) as server:
        yield server, fake


@pytest.fixture
def proxy(worker: tuple[ServerThread, FakeWorker]) -> Iterator[FaultProxy]:
    with fault_proxy(worker[0].url) as running:
        yield running


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def post(url: str, body: dict[str, object], timeout: float = 10) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def quiet(future: Future[httpx.Response]) -> bool:
    """The request is still waiting after QUIET_S."""
    try:
        future.result(QUIET_S)
    except TimeoutError:
        return True
    return False


def test_no_fault_passes_everything(proxy: FaultProxy) -> None:
    answer = post(proxy.url, CHAT)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hello from w0"
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=STREAM) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_latency_delays_each_way(proxy: FaultProxy) -> None:
    proxy.set(Fault(latency_s=0.2))
    began = time.monotonic()
    assert post(proxy.url, CHAT).status_code == 200
    assert time.monotonic() - began >= 0.4  # request and response each waited (a timer never fires early)


def test_stall_before_first_byte_holds_until_released(proxy: FaultProxy, pool: ThreadPoolExecutor) -> None:
    proxy.set(Fault(stall_before_first_byte=True))
    pending = pool.submit(post, proxy.url, CHAT)
    assert quiet(pending)
    proxy.release()
    assert pending.result(10).status_code == 200
    proxy.set(NO_FAULT)
    assert post(proxy.url, CHAT).status_code == 200


def test_stall_after_n_bytes_cuts_a_stream_mid_way(proxy: FaultProxy) -> None:
    proxy.set(Fault(stall_after_bytes=300))
    body = orjson.dumps(STREAM)
    with RawConnection(proxy.url) as conn:
        conn.send(request_head("POST", "/v1/chat/completions", [("content-length", str(len(body)))]) + body)
        while len(conn.received) < 300:
            assert conn.wait_data(10)
        assert len(conn.received) == 300
        assert not conn.wait_data(QUIET_S)  # stalled
        proxy.release()
        while b"data: [DONE]" not in conn.received:
            assert conn.wait_data(10)
        raw = conn.received
    assert raw.count(b"data: ") == 5


def test_reset_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.set(Fault(reset_after_bytes=120))
    with RawConnection(proxy.url) as conn:
        conn.send(request_head("GET", "/health"))
        assert conn.read_to_end(10) is not None
        assert len(conn.received) == 120
    assert proxy.resets == 1
    with pytest.raises(httpx.HTTPError):
        post(proxy.url, CHAT)


def test_refuse_and_come_back_on_the_same_port(proxy: FaultProxy) -> None:
    url = proxy.url
    proxy.set(Fault(refuse=True))
    with pytest.raises(httpx.ConnectError):
        post(url, CHAT)
    proxy.set(NO_FAULT)
    assert proxy.url == url
    assert post(url, CHAT).status_code == 200


def test_a_proxy_between_gateway_and_worker(proxy: FaultProxy) -> None:
    """The gateway relays a stream the proxy resets in the middle of an event as whole events, one error frame,
    then the end (it used to glue the error frame onto the half-sent event: one undecodable line)."""
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="m", model_name="m"))
    registry.publish(Endpoint(service="m", replica_id="m-0", url=proxy.url))
    with serving(create_app(GatewaySettings(), registry)) as gateway:
        assert post(gateway.url, CHAT).status_code == 200
        proxy.set(Fault(reset_after_bytes=400))
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=STREAM, timeout=10) as response:
            assert response.status_code == 200
            frames = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    events = [orjson.loads(frame.removeprefix("data: ")) for frame in frames[:-1]]  # every one whole
    assert events[-1].get("error", {}).get("code") == "upstream_error", frames
    assert all("choices" in event for event in events[:-1])


# -- the scripted worker ------------------------------------------------------------------------------------------
@pytest.fixture
def scripted() -> Iterator[tuple[ServerThread, ScriptedWorker]]:
    fake = ScriptedWorker("s0")
    with serving(fake) as server:
        yield server, fake


def test_steps_are_taken_in_order_then_normal(scripted: tuple[ServerThread, ScriptedWorker]) -> None:
    server, fake = scripted
    fake.then(EngineDead(), Respond(503, b'{"error":{"message":"busy"}}'), Normal())
    dead = post(server.url, CHAT)
    assert (dead.status_code, dead.content) == (500, engine_dead_body())
    assert "EngineCore encountered an issue" in dead.json()["error"]["message"]
    assert post(server.url, CHAT).status_code == 503
    assert httpx.get(f"{server.url}/health").status_code == 200  # takes no step
    assert post(server.url, CHAT).status_code == 200
    assert post(server.url, {**CHAT, "model": "boom-500"}).status_code == 500  # FakeWorker's behaviours remain
    assert [type(step).__name__ for step in fake.consumed] == ["EngineDead", "Respond", "Normal", "Normal"]


def test_delay_headers_until_released(scripted: tuple[ServerThread, ScriptedWorker], pool: ThreadPoolExecutor) -> None:
    server, fake = scripted
    fake.then(DelayHeaders())
    pending = pool.submit(post, server.url, CHAT)
    assert quiet(pending)
    fake.release()
    assert pending.result(10).status_code == 200


def test_stall_mid_stream_until_the_client_leaves(scripted: tuple[ServerThread, ScriptedWorker]) -> None:
    server, fake = scripted
    fake.then(StallMidStream(after_chunks=2))
    got: list[str] = []
    stalled = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=STREAM, timeout=QUIET_S) as response:
            try:
                for line in response.iter_lines():
                    if line:
                        got.append(line)
            except httpx.ReadTimeout:
                stalled.set()

    read()
    assert stalled.is_set()
    assert len(got) == 2
    assert eventually(lambda: fake.aborted_streams == 1)


def test_reset_gives_no_response(scripted: tuple[ServerThread, ScriptedWorker]) -> None:
    server, fake = scripted
    fake.then(Reset())
    body = orjson.dumps(CHAT)
    with RawConnection(server.url) as conn:
        conn.send(request_head("POST", "/v1/chat/completions", [("content-length", str(len(body)))]) + body)
        assert conn.read_to_end(10) == b""  # reset (or closed) before a byte of response
    assert post(server.url, CHAT).status_code == 200


def test_the_same_tools_compose(scripted: tuple[ServerThread, ScriptedWorker], pool: ThreadPoolExecutor) -> None:
    """A scripted worker behind a proxy: a 5xx through a slow link."""
    server, fake = scripted
    with ExitStack() as stack:
        proxy = stack.enter_context(fault_proxy(server.url))
        proxy.set(Fault(latency_s=0.05))
        fake.then(Respond(502, b"bad gateway", b"text/plain"))
        assert post(proxy.url, CHAT).status_code == 502
        assert post(proxy.url, CHAT).status_code == 200
