"""The activator: requests for a service with no ready replica wait here while the controller starts one.

Each service has a bounded FIFO of held requests. Holding a request wakes the service at once (the controller's
autoscaler scales it from zero); when a replica is published, held requests are released in arrival order. A
full queue answers 503 with Retry-After right away; a request still held at its deadline gets 503 and frees its
slot; a client that disconnects while held leaves the queue (its task is cancelled). While waiting, a streaming
client can be sent SSE comment keep-alives so that proxies between it and us don't cut the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.ledger import LoadLedger
from gateway.metrics import GatewayMetrics
from llmserve.endpoints import Endpoint, EndpointReader
from llmserve.protocol.errors import ServingError

KeepAlive = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class ActivatorSettings:
    queue_depth: int = 100  # held requests per service at most
    timeout_s: float = 120.0  # a held request's deadline
    keepalive_s: float = 5.0  # SSE comment interval for held streaming requests
    retry_after_s: int = 5


class Activator:
    def __init__(
        self,
        endpoints: EndpointReader,
        settings: ActivatorSettings,
        ledger: LoadLedger,
        metrics: GatewayMetrics,
    ) -> None:
        self.endpoints = endpoints
        self.settings = settings
        self.ledger = ledger
        self.metrics = metrics
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        endpoints.subscribe(self._endpoints_changed)

    def held(self, service: str) -> int:
        return len(self._queues.get(service, ()))

    async def wait_for_replica(
        self, service: str, tokens: int, keepalive: KeepAlive | None = None, revision: str = ""
    ) -> tuple[Endpoint, ...]:
        """The service's ready endpoints, once there are some (when there are some already: after their next
        change); ServingError(503) on overflow or deadline. `revision`: the one the request waits for (its
        demand is counted there)."""
        queue = self._queues.setdefault(service, deque())
        if len(queue) >= self.settings.queue_depth:
            raise ServingError(
                503,
                f"Too many requests are waiting for '{service}' to start ({len(queue)}); retry later.",
                code="activator_queue_full",
                headers={"retry-after": str(self.settings.retry_after_s)},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        self.ledger.hold(service, tokens, revision)
        started = time.monotonic()
        self.endpoints.wake(service)
        try:
            await self._wait(waiter, started + self.settings.timeout_s, keepalive)
        except TimeoutError:
            raise ServingError(
                503,
                f"No replica of '{service}' became ready within {self.settings.timeout_s:g} s; retry later.",
                code="no_ready_replica",
                headers={"retry-after": str(self.settings.retry_after_s)},
            ) from None
        finally:
            if waiter in queue:  # deadline, disconnect or cancellation: give the slot back
                queue.remove(waiter)
            self.ledger.unhold(service, tokens, revision)
            self.metrics.observe_held(service, time.monotonic() - started)
        return self.endpoints.ready_endpoints(service)

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

    def _endpoints_changed(self, service: str) -> None:
        queue = self._queues.get(service)
        if not queue or not self.endpoints.ready_endpoints(service):
            return
        while queue:  # release in arrival order
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
