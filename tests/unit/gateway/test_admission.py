"""Backpressure: the per-replica load cap (gateway/capacity.py) and the activator's one bounded queue
(gateway/activator.py), with the real ledger and an in-memory registry; no HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gateway.activator import Activator, ActivatorSettings, Waiter
from gateway.capacity import Capacity, ReplicaCap
from gateway.ledger import Dispatched, LoadLedger
from gateway.metrics import GatewayMetrics
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.protocol.errors import ServingError
from tests.support.waiting import until

SERVICE = ServiceInfo(name="m", model_name="m")
R0 = Endpoint(service="m", replica_id="m-0", url="http://r0:1")
R1 = Endpoint(service="m", replica_id="m-1", url="http://r1:1")


class Fleet:
    def __init__(self, cap: ReplicaCap, settings: ActivatorSettings | None = None, **kwargs: object) -> None:
        self.registry = EndpointRegistry()
        self.registry.declare_service(SERVICE)
        self.ledger = LoadLedger()
        self.activator = Activator(
            self.registry,
            settings or ActivatorSettings(queue_depth=10, timeout_s=30, admission_timeout_s=30),
            self.ledger,
            GatewayMetrics(),
            capacity=Capacity(self.ledger, cap),
            **kwargs,  # type: ignore[arg-type]
        )
        self.let_go: list[str] = []
        self.placed: list[Dispatched] = []

    def busy(self, endpoint: Endpoint, tokens: int = 0) -> Dispatched:
        return self.ledger.dispatch(endpoint, tokens)

    def request(self, label: str, tokens: int = 0) -> asyncio.Task[tuple[Endpoint, ...]]:
        """A request as the dispatcher makes it: admitted, then placed on the first open replica."""

        async def wait() -> tuple[Endpoint, ...]:
            opened = tuple(await self.activator.admit(SERVICE, tokens))
            self.let_go.append(label)
            self.placed.append(self.ledger.dispatch(opened[0], tokens))
            return opened

        return asyncio.ensure_future(wait())


async def test_a_request_waits_while_every_replica_is_at_its_cap_and_goes_in_order() -> None:
    fleet = Fleet(ReplicaCap(requests=2))
    fleet.registry.publish(R0)
    running = [fleet.busy(R0), fleet.busy(R0)]
    assert fleet.activator.capacity.open(SERVICE, (R0,), 0) == []
    waiting = [fleet.request(label) for label in "abc"]
    await until(lambda: fleet.activator.held("m") == 3)
    assert fleet.ledger.service("m").held == 3  # demand the autoscaler sees
    running.pop().release()  # one slot frees: one request goes, the first
    await until(lambda: fleet.let_go == ["a"])
    assert await waiting[0] == (R0,)
    assert fleet.activator.held("m") == 2
    running.pop().release()
    await until(lambda: fleet.let_go == ["a", "b"])
    fleet.registry.publish(R1)  # a new replica: the last one goes there
    assert await waiting[2] == (R1,)
    assert fleet.let_go == ["a", "b", "c"]
    assert fleet.activator.peak("m") == 3


async def test_a_new_request_queues_behind_those_waiting() -> None:
    fleet = Fleet(ReplicaCap(requests=1))
    fleet.registry.publish(R0)
    running = fleet.busy(R0)
    first = fleet.request("first")
    await until(lambda: fleet.activator.held("m") == 1)
    assert fleet.activator.waiting("m")  # the dispatcher sends newcomers to the queue, not past it
    running.release()
    await first
    assert not fleet.activator.waiting("m")


async def test_a_full_queue_answers_429_while_replicas_are_busy_and_503_while_none_is_ready() -> None:
    fleet = Fleet(ReplicaCap(requests=1), ActivatorSettings(queue_depth=2, retry_after_s=7))
    cold = [fleet.request("cold") for _ in range(2)]
    await until(lambda: fleet.activator.held("m") == 2)
    with pytest.raises(ServingError) as none_ready:
        await fleet.activator.admit(SERVICE, 0)
    assert (none_ready.value.status, none_ready.value.code) == (503, "activator_queue_full")
    assert none_ready.value.headers["retry-after"] == "7"
    fleet.registry.publish(R0)
    await until(lambda: fleet.let_go == ["cold"])  # one slot: one of them goes
    busy = [fleet.request("busy") for _ in range(2)]
    await until(lambda: fleet.activator.held("m") == 2)  # the other cold one and the first busy one (full now)
    with pytest.raises(ServingError) as shed:
        await fleet.activator.admit(SERVICE, 0)
    assert (shed.value.status, shed.value.code) == (429, "service_overloaded")
    assert shed.value.headers["retry-after"] == "7"
    assert fleet.activator.peak("m") == 2  # never past its bound
    for task in [*cold, *busy]:
        task.cancel()
    await asyncio.gather(*cold, *busy, return_exceptions=True)
    assert fleet.activator.held("m") == 0
    assert fleet.ledger.service("m").held == 0


@pytest.mark.parametrize(
    ("ready", "status", "code"), [(True, 429, "admission_timeout"), (False, 503, "no_ready_replica")]
)
async def test_no_request_waits_past_its_deadline(ready: bool, status: int, code: str) -> None:
    fleet = Fleet(ReplicaCap(requests=1), ActivatorSettings(timeout_s=0.05, admission_timeout_s=0.05))
    if ready:
        fleet.registry.publish(R0)
        fleet.busy(R0)
    with pytest.raises(ServingError) as expired:
        await fleet.activator.admit(SERVICE, 0)
    assert (expired.value.status, expired.value.code) == (status, code)
    assert fleet.activator.held("m") == 0


async def test_the_token_cap_holds_a_request_that_does_not_fit_and_lets_an_oversized_one_onto_an_idle_replica() -> None:
    fleet = Fleet(ReplicaCap(tokens=100))
    fleet.registry.publish(R0)
    running = fleet.busy(R0, tokens=80)
    capacity = fleet.activator.capacity
    assert capacity.open(SERVICE, (R0,), 20) == (R0,)
    assert capacity.open(SERVICE, (R0,), 30) == []
    waiting = fleet.request("30 tokens", tokens=30)
    await until(lambda: fleet.activator.held("m") == 1)
    running.release()
    assert await waiting == (R0,)
    assert capacity.open(SERVICE, (R0,), 500) == []
    fleet.placed[0].release()
    assert capacity.open(SERVICE, (R0,), 500) == (R0,)  # larger than the cap, on a replica with nothing in flight


async def test_a_services_own_cap_wins_over_the_gateways() -> None:
    capacity = Capacity(LoadLedger(), ReplicaCap(requests=256))
    assert capacity.cap(SERVICE) == ReplicaCap(requests=256)
    own = ServiceInfo(name="m", model_name="m", max_requests_per_replica=4, max_tokens_per_replica=8192)
    assert capacity.cap(own) == ReplicaCap(requests=4, tokens=8192)


async def test_two_requests_that_took_the_last_slot_at_once_are_told_apart() -> None:
    ledger = LoadLedger()
    capacity = Capacity(ledger, ReplicaCap(requests=1))
    ledger.dispatch(R0, 0)
    assert not capacity.exceeded(SERVICE, R0)
    ledger.dispatch(R0, 0)
    assert capacity.exceeded(SERVICE, R0)  # the later one goes back to the head of the queue


@dataclass
class Lifo:
    """An ordering of one's own: the last to come goes first (the queue is pluggable)."""

    waiters: list[Waiter] = field(default_factory=list)

    def push(self, waiter: Waiter) -> None:
        self.waiters.append(waiter)

    def push_front(self, waiter: Waiter) -> None:
        self.waiters.append(waiter)

    def remove(self, waiter: Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def __len__(self) -> int:
        return len(self.waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return reversed(self.waiters)


async def test_the_order_is_pluggable() -> None:
    fleet = Fleet(ReplicaCap(requests=1), order=Lifo)
    fleet.registry.publish(R0)
    running = fleet.busy(R0)
    waiting = []
    for label in "abc":
        waiting.append(fleet.request(label))
        await until(lambda: fleet.activator.held("m") == len(waiting))
    running.release()
    await until(lambda: fleet.let_go == ["c"])
    for task in waiting[:2]:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
