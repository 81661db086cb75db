"""Workers that stall or fail, through the real gateway (tests/support/fault_proxy.py, scripted_worker.py):

- a worker that stalls before its first byte: a streamed request is given up on there after the per-try timeout
  and served by another replica (the client gets 200, every token once); a non-streamed request is not cut (its
  headers come only when generation ends);
- a worker that stalls mid-stream: the client gets an error frame within the idle timeout (+ a loaded machine's
  slack), after the tokens it had, never a replay of them;
- a replica answering 5xx: ejected after N in a row (the controller is told), back after the base time; never more
  than half of a service's replicas.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx

from gateway.app import Gateway, build_gateway
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from tests.support.fake_worker import FakeWorker
from tests.support.fault_proxy import Fault, FaultProxy, fault_proxy
from tests.support.scripted_worker import DelayHeaders, Respond, ScriptedWorker, StallMidStream
from tests.support.servers import ServerThread, serving
from tests.support.waiting import eventually

PER_TRY_S = 1.0
IDLE_S = 1.5
BASE_S = 1.0
FAILURES = 3
LATE_S = 6.0  # how late a loaded machine may be on top of a bound
SETTINGS = GatewaySettings(
    upstream_first_byte_timeout_s=PER_TRY_S,
    upstream_stream_idle_timeout_s=IDLE_S,
    outlier_consecutive_failures=FAILURES,
    ejection_base_s=BASE_S,
    default_routing_profile="round-robin",
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Fleet:
    gateway: ServerThread
    parts: Gateway
    registry: EndpointRegistry
    told: list[tuple[str, str]]  # what the controller was told (replica, reason)

    def ready(self) -> list[str]:
        return [e.replica_id for e in self.gateway.call(self.parts.endpoints.ready_endpoints, "m")]


@contextmanager
def fleet(*urls: str, settings: GatewaySettings = SETTINGS) -> Iterator[Fleet]:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="m", model_name="m"))
    for i, url in enumerate(urls):
        registry.publish(Endpoint(service="m", replica_id=f"m-{i}", url=url))
    told: list[tuple[str, str]] = []
    parts = build_gateway(settings, registry, on_eject=lambda e, why: told.append((e.replica_id, why)))
    with serving(parts.app) as gateway:
        yield Fleet(gateway, parts, registry, told)


def frames(text: str) -> list[str]:
    return [f for f in text.split("\n\n") if f]


def test_a_stall_before_the_first_byte_is_retried_on_another_replica() -> None:
    stalling, healthy = FakeWorker("stalling"), FakeWorker("healthy")
    with ExitStack() as stack:
        stalled_server = stack.enter_context(serving(stalling))
        proxy: FaultProxy = stack.enter_context(fault_proxy(stalled_server.url))
        proxy.set(Fault(stall_before_first_byte=True))
        good = stack.enter_context(serving(healthy))
        f = stack.enter_context(fleet(proxy.url, good.url))
        for _ in range(4):  # round-robin: two of them go to the stalling replica first
            answer = httpx.post(f"{f.gateway.url}/v1/chat/completions", json={**CHAT, "stream": True,
                                "max_tokens": 3}, timeout=30)  # fmt: skip
            assert answer.status_code == 200
            got = frames(answer.text)
            assert [json.loads(x[6:])["system_fingerprint"] for x in got[:-1]] == ["healthy"] * 3  # each token once
            assert got[-1] == "data: [DONE]"
        assert proxy.accepted >= 1  # it was tried...
        assert len(stalling.requests) >= 2  # ...and reached, for the requests that went there first
        assert len(healthy.requests) == 4
        assert eventually(lambda: stalling.active_streams == 0, 5)  # given up on: it stopped generating
        proxy.release()


def test_a_non_streamed_request_is_not_cut_by_the_per_try_timeout() -> None:
    """Its headers come only when the generation ends: a slow answer is not a stall."""
    slow = ScriptedWorker("slow", [DelayHeaders(PER_TRY_S * 2)])
    other = FakeWorker("other")
    with ExitStack() as stack:
        slow_server = stack.enter_context(serving(slow))
        other_server = stack.enter_context(serving(other))
        f = stack.enter_context(fleet(slow_server.url, other_server.url))
        answers = [httpx.post(f"{f.gateway.url}/v1/chat/completions", json=CHAT, timeout=30) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert len(slow.consumed) == 1  # the slow one answered its request itself
    assert len(other.requests) == 1


def test_a_stall_mid_stream_ends_with_an_error_frame_and_no_replay() -> None:
    worker = ScriptedWorker("w", [StallMidStream(after_chunks=2, total_chunks=4)])
    with serving(worker) as server, fleet(server.url) as f:
        began = time.monotonic()
        times: list[float] = []
        lines: list[str] = []
        body = {**CHAT, "stream": True, "max_tokens": 4}
        with httpx.stream("POST", f"{f.gateway.url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    times.append(time.monotonic() - began)
        worker.release()
    assert len(lines) == 4  # two chunks, the error frame, [DONE]
    assert [json.loads(x[6:])["choices"][0]["index"] for x in lines[:2]] == [0, 0]
    assert len({x for x in lines[:2]}) == 2  # each chunk once: nothing replayed
    error = json.loads(lines[2][6:])["error"]
    assert error["code"] == "upstream_error"
    assert "no data from the worker" in error["message"]
    assert lines[3] == "data: [DONE]"
    silent = times[2] - times[1]
    assert IDLE_S - 0.05 <= silent <= IDLE_S + 1 + LATE_S
    assert len(worker.requests) == 1  # sent once
    assert eventually(lambda: worker.aborted_streams == 1, 5)  # the worker was told (its connection closed)


def test_a_replica_answering_5xx_is_ejected_after_n_and_back_after_the_base_time() -> None:
    failing = ScriptedWorker("failing", [Respond(500, b'{"error": {"message": "boom", "code": 500}}')] * FAILURES)
    healthy = FakeWorker("healthy")
    with ExitStack() as stack:
        bad = stack.enter_context(serving(failing))
        good = stack.enter_context(serving(healthy))
        f = stack.enter_context(fleet(bad.url, good.url))
        statuses = []
        while len(failing.consumed) < FAILURES:  # round-robin: every other request goes to the failing replica
            statuses.append(httpx.post(f"{f.gateway.url}/v1/chat/completions", json=CHAT, timeout=10).status_code)
            assert len(statuses) <= 4 * FAILURES
        assert statuses.count(502) == FAILURES  # the worker's 500 in the gateway's words
        assert f.ready() == ["m-1"]  # out of rotation after N in a row
        assert [replica for replica, _ in f.told] == ["m-0"]  # the controller is told
        assert "outlier" in f.told[0][1]
        for _ in range(3):  # meanwhile every request goes to the healthy one
            assert httpx.post(f"{f.gateway.url}/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
        assert len(failing.consumed) == FAILURES
        assert eventually(lambda: f.ready() == ["m-0", "m-1"], BASE_S + LATE_S)  # back after the base time
        answers = [httpx.post(f"{f.gateway.url}/v1/chat/completions", json=CHAT, timeout=10) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert len(failing.consumed) == FAILURES + 1  # it serves again (its script is used up: normal answers)


def test_never_more_than_half_of_a_service_is_ejected_as_outliers() -> None:
    a = ScriptedWorker("a", [Respond(500)] * (2 * FAILURES))
    b = ScriptedWorker("b", [Respond(500)] * (2 * FAILURES))
    with ExitStack() as stack:
        servers = [stack.enter_context(serving(w)) for w in (a, b)]
        long_out = SETTINGS.model_copy(update={"ejection_base_s": 60.0})  # the first one stays out meanwhile
        f = stack.enter_context(fleet(*(s.url for s in servers), settings=long_out))
        for _ in range(3 * FAILURES):  # 3 each, then all on the one left: 2 x N in a row there
            assert httpx.post(f"{f.gateway.url}/v1/chat/completions", json=CHAT, timeout=10).status_code == 502
        assert len(f.ready()) == 1  # one of the two is out, the other stays: the failures are everywhere
        assert len(f.told) == 1
        assert len(a.consumed) + len(b.consumed) == 3 * FAILURES
