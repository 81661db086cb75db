"""Where the control plane and the data plane meet: which services exist and which replicas are ready.

The controller writes (`EndpointWriter`; its implementation is the versioned state its control API serves), the
gateway reads (`EndpointReader`; its implementation follows the control API's watch); neither imports the other,
and on the wire these types are encoded by llmserve/protocol/control.py. The other way round, gateways report their
demand (what they hold and have in flight per service) and wake a service that has no replica; the controller's
autoscaler reads the sum (`DemandReader`). `EndpointRegistry` is a plain in-memory reader and writer (tests).

New fields are always added with defaults: an older gateway ignores what it does not know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmserve.payload_policy import LogPolicy
from llmserve.traffic import TrafficTarget

ServiceProtocol = Literal["openai", "v2"]
Component = Literal["predictor", "transformer"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready replica: where to send requests."""

    service: str
    replica_id: str
    url: str  # http://host:port, no trailing slash
    grpc_address: str | None = None  # host:port of its gRPC server (V2 runtimes)
    revision: str = ""  # the revision of the service it runs (a changed predictor is a new revision)
    component: Component = "predictor"  # a transformer replica: the gateway calls its hooks, never routes to it


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What the data plane knows of a declared service."""

    name: str
    model_name: str  # the name clients put in requests
    protocol: ServiceProtocol = "openai"
    created: int = field(default_factory=lambda: int(time.time()))
    min_replicas: int = 1
    routing_profile: str | None = None  # None: the gateway's default profile
    tokenizer_dir: str | None = None  # the model directory, once pulled
    revision: str = ""  # the revision serving (most of) its traffic
    traffic: tuple[TrafficTarget, ...] = ()  # the split between revisions (empty: every endpoint, no split)
    transformer_timeout_s: float | None = None  # set when it has a transformer: its hook timeout
    logger: LogPolicy | None = None  # payload logging of its exchanges
    max_requests_per_replica: int | None = None  # load cap per replica; None: the gateway's default
    max_tokens_per_replica: int | None = None  # load cap in tokens in flight per replica; None: the gateway's


@dataclass(frozen=True, slots=True)
class Demand:
    """A service's load as the gateway sees it."""

    in_flight: int = 0  # requests being answered by replicas
    in_flight_tokens: int = 0  # their prompt + expected output tokens
    held: int = 0  # requests the activator holds while no replica is ready
    held_tokens: int = 0
    arrived: int = 0  # requests received so far (a counter: arrivals between two reads show as an increase)
    revisions: Mapping[str, Demand] = field(default_factory=dict)  # the same, per revision the requests went to


NO_DEMAND = Demand()


class DemandReader(Protocol):
    def demand(self, service: str) -> Demand: ...

    def revision_demand(self, service: str, revision: str) -> Demand:
        """One revision's share (revision "": demand reported without a revision, from older gateways)."""
        ...


Listener = Callable[[str], None]


class EndpointReader(Protocol):
    def resolve_model(self, model_name: str) -> ServiceInfo | None: ...

    def services(self) -> list[ServiceInfo]: ...

    def ready_endpoints(self, service: str) -> tuple[Endpoint, ...]: ...

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(service)` after every change to that service's ready endpoints."""
        ...

    def wake(self, service: str) -> None:
        """A request is waiting for `service` and nothing is ready: ask for a replica now."""
        ...


class EndpointWriter(Protocol):
    def declare_service(self, info: ServiceInfo) -> None: ...

    def withdraw_service(self, name: str) -> None: ...

    def publish(self, endpoint: Endpoint) -> None: ...

    def unpublish(self, service: str, replica_id: str) -> None: ...

    def set_endpoints(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Replace a service's ready endpoints in one change (a rollout switching revisions)."""
        ...


class EndpointRegistry:
    """In-memory registry; reads are lock-free tuple lookups (the gateway's hot path)."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceInfo] = {}
        self._by_model: dict[str, ServiceInfo] = {}
        self._ready: dict[str, tuple[Endpoint, ...]] = {}
        self._listeners: list[Listener] = []
        self._wake_listeners: list[Listener] = []

    # -- reader -------------------------------------------------------------------------------------------
    def resolve_model(self, model_name: str) -> ServiceInfo | None:
        return self._by_model.get(model_name)

    def services(self) -> list[ServiceInfo]:
        return list(self._services.values())

    def ready_endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self._ready.get(service, ())

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(service)` after every change to that service's endpoints."""
        self._listeners.append(listener)

    def wake(self, service: str) -> None:
        for listener in self._wake_listeners:
            listener(service)

    def on_wake(self, listener: Listener) -> None:
        self._wake_listeners.append(listener)

    # -- writer -------------------------------------------------------------------------------------------
    def declare_service(self, info: ServiceInfo) -> None:
        previous = self._services.get(info.name)
        if previous is not None:
            self._by_model.pop(previous.model_name, None)
        self._services[info.name] = info
        self._by_model[info.model_name] = info
        self._ready.setdefault(info.name, ())

    def withdraw_service(self, name: str) -> None:
        info = self._services.pop(name, None)
        if info is not None:
            self._by_model.pop(info.model_name, None)
        self._ready.pop(name, None)
        self._notify(name)

    def publish(self, endpoint: Endpoint) -> None:
        current = tuple(e for e in self._ready.get(endpoint.service, ()) if e.replica_id != endpoint.replica_id)
        self._ready[endpoint.service] = (*current, endpoint)
        self._notify(endpoint.service)

    def set_endpoints(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        self._ready[service] = endpoints
        self._notify(service)

    def unpublish(self, service: str, replica_id: str) -> None:
        current = self._ready.get(service, ())
        remaining = tuple(e for e in current if e.replica_id != replica_id)
        if len(remaining) != len(current):
            self._ready[service] = remaining
            self._notify(service)

    def _notify(self, service: str) -> None:
        for listener in self._listeners:
            listener(service)
