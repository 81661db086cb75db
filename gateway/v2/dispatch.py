"""What V2 REST and gRPC share, independent of the transport: find the service a model name belongs to, wait
for a ready replica (the activator, at zero), place the request on the least-busy replica, and count it.

Placement is least-request on this gateway's own in-flight counts (the LoadBoard the OpenAI scheduler also
keeps), ties taken in turn so that idle replicas share a light load. A placed request counts on the LoadBoard
(per replica) and in the DemandTracker (per service, read by the autoscaler) until `Placement.release()`.
V2 requests carry no tokens: they count 0 tokens everywhere (scale V2 services on concurrency).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.activator import Activator
from gateway.demand import DemandTracker
from gateway.metrics import GatewayMetrics
from gateway.routing import LoadBoard
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamPool
from llmserve.endpoints import Endpoint, EndpointReader, ServiceInfo
from llmserve.protocol.errors import ServingError


@dataclass(frozen=True)
class V2Deps:
    endpoints: EndpointReader
    board: LoadBoard
    pool: UpstreamPool
    metrics: GatewayMetrics
    settings: GatewaySettings
    demand: DemandTracker
    activator: Activator


class Placement:
    """A request placed on a replica; `release()` when it is answered (idempotent)."""

    __slots__ = ("_dispatcher", "endpoint", "released")

    def __init__(self, dispatcher: Dispatcher, endpoint: Endpoint) -> None:
        self._dispatcher = dispatcher
        self.endpoint = endpoint
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._dispatcher.board.finished(self.endpoint, 0)
            self._dispatcher.demand.finish(self.endpoint.service, 0)


class Dispatcher:
    def __init__(self, deps: V2Deps) -> None:
        self.endpoints = deps.endpoints
        self.board = deps.board
        self.metrics = deps.metrics
        self.demand = deps.demand
        self.activator = deps.activator
        self.retry_after_s = deps.settings.retry_after_seconds
        self._turn = 0

    def service(self, model: str) -> ServiceInfo:
        """The V2 service serving `model`; 404 for unknown models and for LLM (OpenAI) services."""
        info = self.endpoints.resolve_model(model)
        if info is None or info.protocol != "v2":
            raise ServingError.model_not_found(model)
        return info

    def arrived(self, service: ServiceInfo) -> None:
        self.metrics.request_started(service.model_name)
        self.demand.arrived(service.name)

    def done(self, service: ServiceInfo) -> None:
        self.metrics.request_finished(service.model_name)

    async def replicas(self, service: ServiceInfo) -> Sequence[Endpoint]:
        """The service's ready replicas; with none, the request waits in the activator (503 on its deadline)."""
        endpoints: Sequence[Endpoint] = self.endpoints.ready_endpoints(service.name)
        if endpoints:
            return endpoints
        endpoints = await self.activator.wait_for_replica(service.name, 0)
        if not endpoints:
            raise ServingError.no_ready_replica(service.name, self.retry_after_s)
        return endpoints

    def place(self, endpoints: Sequence[Endpoint]) -> Placement:
        """Least in-flight requests among `endpoints` (not empty), ties in turn; counted until released."""
        count = len(endpoints)
        if count == 1:
            chosen = endpoints[0]
        else:
            self._turn += 1
            start = self._turn % count
            chosen = endpoints[start]
            least = self.board.get(chosen).in_flight
            for i in range(1, count):
                candidate = endpoints[(start + i) % count]
                load = self.board.get(candidate).in_flight
                if load < least:
                    chosen, least = candidate, load
        self.board.started(chosen, 0)
        self.demand.start(chosen.service, 0)
        return Placement(self, chosen)

    def waiting_services(self) -> list[str]:
        """V2 services that should be up (minReplicas > 0) and have no ready replica: the server is not ready."""
        return [
            s.name
            for s in self.endpoints.services()
            if s.protocol == "v2" and s.min_replicas > 0 and not self.endpoints.ready_endpoints(s.name)
        ]

    def observe(self, model: str, route: str, status: int, started: float) -> None:
        self.metrics.observe(model, route, status, time.perf_counter() - started)
