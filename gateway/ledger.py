"""The gateway's one load ledger: what this gateway has in flight and held, per replica and per service.

A request counts as in flight (requests and tokens) from the moment it is dispatched to a replica until its
response ends, streamed or not; a request the activator holds counts as held until it leaves the queue. Routing
reads the per-replica loads (merged with the signals scraped from the replicas), the demand reports the gateway
sends the controller read the per-service counts, and so do the metrics. Nothing else keeps counts.

The gateway runs on one event-loop thread: no locking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.routing.load import EndpointLoad
from llmserve.endpoints import Demand, Endpoint
from llmserve.protocol.vllm_metrics import Scraped


@dataclass(slots=True)
class ServiceLoad:
    """One service's requests as this gateway sees them; `revisions` holds the same counts per revision the
    requests went to (there `arrived` counts the requests routed to it), which the autoscaler scales on."""

    in_flight: int = 0  # dispatched to a replica, response not ended
    in_flight_tokens: int = 0  # their prompt + expected output tokens
    held: int = 0  # waiting in the activator for a ready replica
    held_tokens: int = 0
    arrived: int = 0  # requests received so far (a counter)
    revisions: dict[str, ServiceLoad] = field(default_factory=dict)

    def revision(self, name: str) -> ServiceLoad:
        load = self.revisions.get(name)
        if load is None:
            load = self.revisions[name] = ServiceLoad()
        return load

    def demand(self) -> Demand:
        revisions = {name: load.demand() for name, load in self.revisions.items()}
        return Demand(self.in_flight, self.in_flight_tokens, self.held, self.held_tokens, self.arrived, revisions)


class Dispatched:
    """A request dispatched to a replica: `first_token()` when its first token came back, `release()` when its
    response ended (idempotent; releasing also ends the prefill)."""

    __slots__ = ("_ledger", "endpoint", "prefill_tokens", "prefilled", "released", "tokens")

    def __init__(self, ledger: LoadLedger, endpoint: Endpoint, tokens: int, prefill_tokens: int) -> None:
        self._ledger = ledger
        self.endpoint = endpoint
        self.tokens = tokens
        self.prefill_tokens = prefill_tokens  # uncached prompt tokens the replica computes before the first token
        self.prefilled = False
        self.released = False

    def first_token(self) -> None:
        if not self.prefilled:
            self.prefilled = True
            load = self._ledger.current(self.endpoint)
            if load is not None:
                load.pending_prefill = max(0, load.pending_prefill - self.prefill_tokens)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.first_token()
        self._ledger.finished(self.endpoint, self.tokens)


class LoadLedger:
    def __init__(self) -> None:
        self.loads: dict[str, EndpointLoad] = {}  # by replica id
        self._services: dict[str, ServiceLoad] = {}
        self._on_release: list[Callable[[str], None]] = []

    def on_release(self, listener: Callable[[str], None]) -> None:
        """`listener(service)` after each request of `service` is released (a slot on a replica freed)."""
        self._on_release.append(listener)

    # -- replicas (what routing reads) -----------------------------------------------------------------------------
    def load(self, endpoint: Endpoint) -> EndpointLoad:
        """The replica's load; a replica that came back at another URL (restarted) starts from zero."""
        load = self.loads.get(endpoint.replica_id)
        if load is None or load.endpoint.url != endpoint.url:
            load = self.loads[endpoint.replica_id] = EndpointLoad(endpoint)
        return load

    def current(self, endpoint: Endpoint) -> EndpointLoad | None:
        """The replica's load if it is still the same replica (same URL), without creating one."""
        load = self.loads.get(endpoint.replica_id)
        return load if load is not None and load.endpoint.url == endpoint.url else None

    def record_scrape(self, endpoint: Endpoint, scraped: Scraped | None, now: float) -> None:
        load = self.load(endpoint)
        if scraped is None:
            load.scrape_failures += 1
            return
        load.scraped = scraped
        load.scraped_at = now
        load.scrape_failures = 0
        load.in_flight_at_scrape = load.in_flight

    def forget_except(self, live: set[str]) -> None:
        """Drop replicas that are gone, unless requests are still counted on them."""
        for replica_id in [r for r, load in self.loads.items() if r not in live and load.in_flight == 0]:
            del self.loads[replica_id]

    # -- requests --------------------------------------------------------------------------------------------------
    def service(self, service: str) -> ServiceLoad:
        load = self._services.get(service)
        if load is None:
            load = self._services[service] = ServiceLoad()
        return load

    def services(self) -> Mapping[str, ServiceLoad]:
        return self._services

    def demand(self, service: str) -> Demand:
        load = self._services.get(service)
        return load.demand() if load is not None else Demand()

    def arrived(self, service: str) -> None:
        self.service(service).arrived += 1

    def hold(self, service: str, tokens: int, revision: str = "") -> None:
        load = self.service(service)
        load.held += 1
        load.held_tokens += tokens
        if revision:
            share = load.revision(revision)
            share.held += 1
            share.held_tokens += tokens

    def unhold(self, service: str, tokens: int, revision: str = "") -> None:
        load = self.service(service)
        load.held -= 1
        load.held_tokens -= tokens
        if revision:
            share = load.revision(revision)
            share.held -= 1
            share.held_tokens -= tokens

    def dispatch(self, endpoint: Endpoint, tokens: int, prefill_tokens: int = 0) -> Dispatched:
        """Count a request on `endpoint` (and its service) from now until the returned record is released."""
        load = self.load(endpoint)
        load.in_flight += 1
        load.in_flight_tokens += tokens
        load.pending_prefill += prefill_tokens
        service = self.service(endpoint.service)
        service.in_flight += 1
        service.in_flight_tokens += tokens
        share = service.revision(endpoint.revision)
        share.in_flight += 1
        share.in_flight_tokens += tokens
        share.arrived += 1
        return Dispatched(self, endpoint, tokens, prefill_tokens)

    def finished(self, endpoint: Endpoint, tokens: int) -> None:
        service = self.service(endpoint.service)
        service.in_flight -= 1
        service.in_flight_tokens -= tokens
        share = service.revision(endpoint.revision)
        share.in_flight -= 1
        share.in_flight_tokens -= tokens
        load = self.current(endpoint)
        if load is not None:
            load.in_flight = max(0, load.in_flight - 1)
            load.in_flight_tokens = max(0, load.in_flight_tokens - tokens)
            load.in_flight_at_scrape = min(load.in_flight_at_scrape, load.in_flight)
        for listener in self._on_release:
            listener(endpoint.service)
