"""Backpressure through the real gateway on simulated workers: twice what a fleet can take, for 30 s.

Two vLLM-contract simulators behind a gateway that lets 4 requests in flight per replica and 8 wait in the queue:
the fleet takes 16 requests at once. 32 clients send without pause (a client that is turned away tries again 0.2 s
later, ignoring Retry-After, so the pressure stays at 2x). What must hold: the excess is turned away with 429 (the
replicas are busy: shed) and Retry-After, nothing else fails; no request waits past its deadline; the queue never
holds more than its bound; neither the gateway nor the workers ever have more than the cap in flight per replica
(the backlog stays in the gateway instead of piling up inside vLLM)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest

from gateway.app import Gateway, build_gateway
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.protocol.vllm_metrics import parse_vllm_metrics
from llmserve.workers.sim import create_app as create_sim
from tests.support.servers import ServerThread, serving

CAP = 4
QUEUE = 8
REPLICAS = 2
DEADLINE_S = 3.0
SECONDS = 30.0
CLIENTS = 2 * (REPLICAS * CAP + QUEUE)
LATE_S = 6.0  # how late a loaded machine may answer on top of a bound
SETTINGS = GatewaySettings(
    max_requests_per_replica=CAP,
    activator_queue_depth=QUEUE,
    admission_timeout_s=DEADLINE_S,
    retry_after_seconds=1,
    default_routing_profile="least-request",
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12, "ignore_eos": True}


@dataclass
class Fleet:
    gateway: ServerThread
    parts: Gateway
    workers: list[ServerThread]


@dataclass
class Observed:
    answers: list[tuple[int, float, str | None]] = field(default_factory=list)  # status, seconds, Retry-After
    peak_in_flight: int = 0  # per replica, as the gateway counts
    peak_at_worker: float = 0.0  # running + waiting inside one simulator
    peak_queue: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="m", model_name="m"))
    with ExitStack() as stack:
        workers = [stack.enter_context(serving(create_sim("m"))) for _ in range(REPLICAS)]
        for i, worker in enumerate(workers):
            registry.publish(Endpoint(service="m", replica_id=f"m-{i}", url=worker.url))
        parts = build_gateway(SETTINGS, registry)
        gateway = stack.enter_context(serving(parts.app))
        yield Fleet(gateway, parts, workers)


def client(url: str, until: float, seen: Observed) -> None:
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < until:
            began = time.monotonic()
            response = http.post(f"{url}/v1/chat/completions", json=CHAT)
            with seen.lock:
                seen.answers.append(
                    (response.status_code, time.monotonic() - began, response.headers.get("retry-after"))
                )
            if response.status_code != 200:
                time.sleep(0.2)  # the client's own pacing, not a synchronisation


def sample(fleet: Fleet, until: float, seen: Observed) -> None:
    """What is in flight and waiting, from the gateway's ledger and queue and from each worker's own metrics."""
    ledger = fleet.parts.ledger
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < until:
            in_flight = fleet.gateway.call(lambda: max((load.in_flight for load in ledger.loads.values()), default=0))
            queued = fleet.gateway.call(fleet.parts.activator.held, "m")
            at_workers = []
            for worker in fleet.workers:
                scraped = parse_vllm_metrics(http.get(f"{worker.url}/metrics").text)
                at_workers.append(scraped.running + scraped.waiting)
            seen.peak_in_flight = max(seen.peak_in_flight, in_flight)
            seen.peak_queue = max(seen.peak_queue, queued)
            seen.peak_at_worker = max(seen.peak_at_worker, *at_workers)
            time.sleep(0.05)  # the sampling period


def test_twice_the_fleets_capacity_for_30_s(fleet: Fleet) -> None:
    seen = Observed()
    until = time.monotonic() + SECONDS
    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        futures = [pool.submit(client, fleet.gateway.url, until, seen) for _ in range(CLIENTS)]
        futures.append(pool.submit(sample, fleet, until, seen))
        for future in futures:
            future.result()
    statuses = Counter(status for status, _, _ in seen.answers)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] >= 50, statuses
    assert statuses[429] >= 50, statuses  # the excess is shed
    assert all(retry == "1" for status, _, retry in seen.answers if status == 429)
    shed = [seconds for status, seconds, _ in seen.answers if status == 429]
    assert max(shed) <= DEADLINE_S + LATE_S  # a full queue answers at once, a waiting request at its deadline
    served = [seconds for status, seconds, _ in seen.answers if status == 200]
    assert max(served) <= DEADLINE_S + LATE_S + 10  # waited at most the deadline, then served
    assert fleet.gateway.call(fleet.parts.activator.peak, "m") <= QUEUE
    assert seen.peak_queue <= QUEUE
    assert 0 < seen.peak_in_flight <= CAP
    assert seen.peak_at_worker <= CAP  # no pile-up inside the worker
    assert fleet.gateway.call(fleet.parts.activator.held, "m") == 0
    assert fleet.gateway.call(lambda: fleet.parts.ledger.service("m").in_flight) == 0
