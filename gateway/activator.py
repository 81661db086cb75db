"""The activator: the one queue where a service's requests wait for room, bounded, with a deadline.

A request waits here when its service (the revision the traffic split picked for it) has no ready replica (the
controller is starting one: holding a request wakes the service at once, from zero too) and when every ready replica
is at its load cap (gateway/capacity.py).
Each service has one bounded queue; its ordering is pluggable (`AdmissionQueue`: FIFO by default, a per-tenant fair
order can replace it without a second mechanism). Waiters are let go from the head as room appears — a replica
published, a request released on the ledger, an ejection over — as many as there are free slots, so a burst does
not stampede; a waiter whose replicas (those of its revision) have no room keeps its place while those behind it
may go. A new request queues behind those already waiting for room.

What a client sees, each with Retry-After:
- the queue is full: 429 while the service has ready replicas (they are all busy: the request is shed), 503 while
  it has none (`activator_queue_full`);
- its deadline passes while waiting: 429 for a request that came while replicas were busy (`admission_timeout_s`),
  503 for one that came while none was ready (`timeout_s`, long enough for a cold start);
- a client that disconnects leaves the queue (its task is cancelled).
While waiting, a streaming client can be sent SSE comment keep-alives so that proxies between it and us don't cut
the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.capacity import Capacity, ReplicaCap
from gateway.ledger import LoadLedger
from gateway.metrics import GatewayMetrics
from llmserve.endpoints import Endpoint, EndpointReader, ServiceInfo
from llmserve.protocol.errors import ServingError

KeepAlive = Callable[[], Awaitable[None]]
# Of a service's ready replicas, those one request may use now: (its revision, the replicas of that revision that
# have room for it). The dispatcher's traffic split and load cap, applied by the queue when it lets a request go.
Usable = Callable[[Sequence[Endpoint]], tuple[str, Sequence[Endpoint]]]


@dataclass(frozen=True)
class ActivatorSettings:
    queue_depth: int = 100  # requests waiting per service at most
    timeout_s: float = 120.0  # deadline of a request that came while no replica was ready (a cold start)
    admission_timeout_s: float = 30.0  # deadline of a request that came while every ready replica was at its cap
    keepalive_s: float = 5.0  # SSE comment interval for held streaming requests
    retry_after_s: int = 5


@dataclass(slots=True, eq=False)
class Waiter:
    """One request in a queue."""

    future: asyncio.Future[None]
    tokens: int
    usable: Usable
    busy: bool  # it waits for room on replicas that are ready (else for a replica to become ready)
    takes_slot: bool = True  # it is placed on a predictor replica once let go
    released: bool = False  # let go by the queue (not by its deadline or its client)


class AdmissionQueue(Protocol):
    """The order in which one service's waiting requests are let go."""

    def push(self, waiter: Waiter) -> None:
        """A request that arrived."""
        ...

    def push_front(self, waiter: Waiter) -> None:
        """A request that was let go but found no room after all: it goes first next time."""
        ...

    def remove(self, waiter: Waiter) -> None:
        """A request that leaves (let go, deadline, disconnect); absent ones are ignored."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Waiter]:
        """The waiters in the order they are to be let go."""
        ...


@dataclass
class FifoQueue:
    """Arrival order."""

    waiters: deque[Waiter] = field(default_factory=deque)

    def push(self, waiter: Waiter) -> None:
        self.waiters.append(waiter)

    def push_front(self, waiter: Waiter) -> None:
        self.waiters.appendleft(waiter)

    def remove(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def __len__(self) -> int:
        return len(self.waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self.waiters)


class Activator:
    def __init__(
        self,
        endpoints: EndpointReader,
        settings: ActivatorSettings,
        ledger: LoadLedger,
        metrics: GatewayMetrics,
        *,
        capacity: Capacity | None = None,
        order: Callable[[], AdmissionQueue] = FifoQueue,
    ) -> None:
        self.endpoints = endpoints
        self.settings = settings
        self.ledger = ledger
        self.metrics = metrics
        self.capacity = capacity or Capacity(ledger, ReplicaCap())
        self._order = order
        self._queues: dict[str, AdmissionQueue] = {}
        self._services: dict[str, ServiceInfo] = {}  # of the requests waiting, for their caps
        self._releasing: dict[str, int] = {}  # let go, not yet back with their replicas
        self._busy: dict[str, int] = {}  # waiting for room on ready replicas (newcomers queue behind them)
        self._peaks: dict[str, int] = {}
        endpoints.subscribe(self._wake)
        ledger.on_release(self._wake)

    def held(self, service: str) -> int:
        """Requests waiting for `service` now."""
        queue = self._queues.get(service)
        return len(queue) if queue is not None else 0

    def peak(self, service: str) -> int:
        """The most requests that ever waited for `service` at once."""
        return self._peaks.get(service, 0)

    def waiting(self, service: str) -> bool:
        """Whether a new request must queue behind others: some wait for room on the service's ready replicas, or
        were let go and are not dispatched yet. (Requests waiting for a replica to start, a pinned revision's say,
        hold nobody up.)"""
        return self._busy.get(service, 0) > 0 or self._releasing.get(service, 0) > 0

    async def admit(
        self,
        service: ServiceInfo,
        tokens: int,
        keepalive: KeepAlive | None = None,
        usable: Usable | None = None,
        *,
        again: bool = False,
        takes_slot: bool = True,
    ) -> Sequence[Endpoint]:
        """Wait until `service` has a ready replica the request may use (`usable`: its revision's replicas with
        room for it; default: any with room for `tokens`); those replicas. `again`: the request was let go once and
        found no room (it goes to the head). `takes_slot`: it is placed on what it gets (False: a wait for another
        kind of replica, a transformer's, which takes no slot and is always a wait for a start). ServingError (429
        or 503, with Retry-After) when the queue is full or the deadline passes."""
        name = service.name
        usable = usable or self._any_with_room(service, tokens)
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = self._order()
        self._services[name] = service
        revision = self._revision(service, usable)
        busy = takes_slot and bool(self._ready_of(name, revision))  # replicas exist: they are all at their cap
        if len(queue) >= self.settings.queue_depth and not again:
            raise self._full(name, len(queue), busy)
        limit = self.settings.admission_timeout_s if busy else self.settings.timeout_s
        started = time.monotonic()
        deadline = started + limit
        self.ledger.hold(name, tokens, revision)
        try:
            while True:
                waiter = Waiter(asyncio.get_running_loop().create_future(), tokens, usable, busy, takes_slot)
                if again:
                    queue.push_front(waiter)
                else:
                    queue.push(waiter)
                self._peaks[name] = max(self._peaks.get(name, 0), len(queue))
                if busy:
                    self._busy[name] = self._busy.get(name, 0) + 1
                if not busy:
                    self.endpoints.wake(name)
                self._wake(name)  # room may be there already (a release while it was let go)
                try:
                    await self._wait(waiter.future, deadline, keepalive)
                except TimeoutError:
                    raise self._expired(name, limit, busy) from None
                finally:
                    if busy:
                        self._busy[name] -= 1
                    if waiter.released and takes_slot:
                        self._releasing[name] -= 1
                    else:  # deadline, disconnect or cancellation: give the slot back
                        queue.remove(waiter)
                ready = self.endpoints.ready_endpoints(name)
                _, opened = usable(ready)
                if opened:
                    return opened
                # Someone else took the room: first in line next time.
                again, busy = True, busy or (takes_slot and bool(ready))
        finally:
            self.ledger.unhold(name, tokens, revision)
            self.metrics.observe_held(name, time.monotonic() - started)

    def _any_with_room(self, service: ServiceInfo, tokens: int) -> Usable:
        def usable(ready: Sequence[Endpoint]) -> tuple[str, Sequence[Endpoint]]:
            return "", self.capacity.open(service, ready, tokens)

        return usable

    def _revision(self, service: ServiceInfo, usable: Usable) -> str:
        """The revision a request waits for (its demand is counted there)."""
        return usable(self.endpoints.ready_endpoints(service.name))[0]

    def _ready_of(self, service: str, revision: str) -> list[Endpoint]:
        return [e for e in self.endpoints.ready_endpoints(service) if not revision or e.revision == revision]

    async def _wait(self, waiter: asyncio.Future[None], deadline: float, keepalive: KeepAlive | None) -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            interval = min(remaining, self.settings.keepalive_s) if keepalive is not None else remaining
            try:
                await asyncio.wait_for(asyncio.shield(waiter), interval)
                return
            except TimeoutError:
                if keepalive is not None and deadline - time.monotonic() > 0:
                    await keepalive()

    def _wake(self, name: str) -> None:
        """Let waiters go from the head of `name`'s queue, as many as its ready replicas have free slots."""
        queue = self._queues.get(name)
        if not queue:
            return
        ready = self.endpoints.ready_endpoints(name)
        service = self._services[name]
        slots = self.capacity.free_slots(service, ready) - self._releasing.get(name, 0) if ready else 0
        for waiter in list(queue):
            if waiter.future.done() or (waiter.takes_slot and slots <= 0) or not waiter.usable(ready)[1]:
                continue  # what it may use (its revision's replicas) has no room yet: it keeps its place
            queue.remove(waiter)
            waiter.released = True
            waiter.future.set_result(None)
            if waiter.takes_slot:
                self._releasing[name] = self._releasing.get(name, 0) + 1
                slots -= 1

    def _full(self, name: str, waiting: int, busy: bool) -> ServingError:
        retry = {"retry-after": str(self.settings.retry_after_s)}
        if busy:
            return ServingError(
                429,
                f"'{name}' is at capacity and {waiting} requests are already waiting; retry later.",
                code="service_overloaded",
                headers=retry,
            )
        return ServingError(
            503,
            f"Too many requests are waiting for '{name}' to start ({waiting}); retry later.",
            code="activator_queue_full",
            headers=retry,
        )

    def _expired(self, name: str, limit: float, busy: bool) -> ServingError:
        retry = {"retry-after": str(self.settings.retry_after_s)}
        if busy:
            return ServingError(
                429,
                f"Every replica of '{name}' stayed at capacity for {limit:g} s; retry later.",
                code="admission_timeout",
                headers=retry,
            )
        return ServingError(
            503,
            f"No replica of '{name}' became ready within {limit:g} s; retry later.",
            code="no_ready_replica",
            headers=retry,
        )
