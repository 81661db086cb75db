"""Replicas this gateway has stopped sending requests to, and the endpoint view that leaves them out.

Two rules take a replica out of rotation here, without waiting for the controller:
- **dead**: a request could not reach it (connection refused or reset before any byte: it is gone or going) or it
  answered that its engine is dead. Out at once, whatever the rest of the service looks like; failing again after
  its time, it stays out twice as long.
- **outlier**: `outlier_failures` requests in a row failed on it (5xx answers, a stall before the first byte, a
  stream that broke or went idle; any other answer clears the count). Out for `base_s` x the times it was ejected
  so, but never more than half of its service's published replicas are out at once: a fleet that fails everywhere
  is the workload's problem, and ejecting it all would only turn errors into 503s.
A replica comes back when the controller publishes it again at another address (it was restarted), when it is no
longer published at all, or when its ejection time is over (then requests try it again). The controller is told
(`on_eject`), so that it checks the replica and replaces it.

`EjectingView` is the `EndpointReader` the rest of the data plane reads: the watched endpoints minus the ejected
ones, cached per service so that the hot path stays a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmserve.endpoints import Endpoint, EndpointReader, Listener, ServiceInfo

log = logging.getLogger("llmserve.gateway")

OnEject = Callable[[Endpoint, str], None]
Population = Callable[[str], int]  # a service's published replicas, ejected ones included


@dataclass(slots=True)
class _Ejection:
    url: str
    until: float
    times: int
    reason: str
    service: str = ""
    outlier: bool = False


class Ejector:
    """Which replicas are out of rotation, and until when (an injected clock; no timers of its own)."""

    def __init__(
        self,
        *,
        base_s: float = 5.0,
        max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_eject: OnEject | None = None,
        outlier_failures: int = 5,
        population: Population | None = None,
    ) -> None:
        """`outlier_failures`: failures in a row that make a replica an outlier (0: no outlier rule);
        `population`: how many replicas a service has published (the half cap counts against it)."""
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.on_eject = on_eject
        self.outlier_failures = outlier_failures
        self.population = population
        self._ejected: dict[str, _Ejection] = {}  # by replica id
        self._failures: dict[str, tuple[str, int]] = {}  # replica id -> (url, failures in a row)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """`listener(service)` after a replica of `service` was ejected, and when that ejection is over."""
        self._listeners.append(listener)

    def observed(self, endpoint: Endpoint, *, failed: bool, what: str = "failed") -> None:
        """A request's outcome on `endpoint` (the outlier rule). Hot path: a success costs a dictionary lookup."""
        failures = self._failures
        if not failed:
            if failures and endpoint.replica_id in failures:
                del failures[endpoint.replica_id]
            return
        if self.outlier_failures <= 0:
            return
        url, count = failures.get(endpoint.replica_id, (endpoint.url, 0))
        count = count + 1 if url == endpoint.url else 1
        if count < self.outlier_failures:
            failures[endpoint.replica_id] = (endpoint.url, count)
            return
        failures.pop(endpoint.replica_id, None)
        if not self._may_eject_outlier(endpoint.service):
            log.warning("replica %s: %d failures in a row (%s), but half of '%s' is out already: kept in rotation",
                        endpoint.replica_id, count, what, endpoint.service)  # fmt: skip
            return
        log.warning("replica %s: %d failures in a row (%s): ejected", endpoint.replica_id, count, what)
        self.eject(endpoint, f"outlier: {count} failures in a row ({what})", outlier=True)

    def _may_eject_outlier(self, service: str) -> bool:
        published = self.population(service) if self.population is not None else 0
        now = self.clock()
        out = sum(1 for e in self._ejected.values() if e.service == service and e.until > now)
        return 2 * (out + 1) <= published

    def eject(self, endpoint: Endpoint, reason: str, *, outlier: bool = False) -> None:
        """Out of rotation: a dead replica (doubling times) or an outlier (`outlier`: base_s x times)."""
        previous = self._ejected.get(endpoint.replica_id)
        times = previous.times + 1 if previous is not None and previous.url == endpoint.url else 1
        duration = min(self.base_s * times if outlier else self.base_s * 2 ** (times - 1), self.max_s)
        now = self.clock()
        self._ejected[endpoint.replica_id] = _Ejection(
            endpoint.url, now + duration, times, reason, endpoint.service, outlier
        )
        for replica_id in [r for r, e in self._ejected.items() if e.until + self.max_s < now]:
            del self._ejected[replica_id]  # long over: keep the table small
        self._notify(endpoint.service)
        self._call_when_over(endpoint.service, duration)
        if self.on_eject is not None:
            self.on_eject(endpoint, reason)

    def _notify(self, service: str) -> None:
        for listener in self._listeners:
            listener(service)

    def _call_when_over(self, service: str, delay_s: float) -> None:
        """Tell listeners again when the ejection is over (requests held for the service may use it again)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test driving the clock): the reader checks the clock on read
            return
        loop.call_later(delay_s, self._notify, service)

    def ejected(self, endpoint: Endpoint) -> bool:
        entry = self._ejected.get(endpoint.replica_id)
        return entry is not None and entry.url == endpoint.url and self.clock() < entry.until

    def next_expiry(self) -> float | None:
        """When the earliest ejection ends (clock time), if any is active."""
        now = self.clock()
        active = [e.until for e in self._ejected.values() if e.until > now]
        return min(active) if active else None

    def forget(self, replica_id: str) -> None:
        self._ejected.pop(replica_id, None)
        self._failures.pop(replica_id, None)

    def describe(self) -> list[dict[str, object]]:
        now = self.clock()
        return [
            {"replica": rid, "url": e.url, "reason": e.reason, "times": e.times, "remaining_s": round(e.until - now, 1)}
            for rid, e in self._ejected.items()
            if e.until > now
        ]


class EjectingView:
    """An EndpointReader: `source`'s ready endpoints minus the ejected ones. `ready_endpoints` are the predictor
    replicas (what requests are routed to); a service's transformer replicas are read apart
    (`transformer_endpoints`).

    The filtered tuples of a service are cached until the source changes, an ejection happens, or the earliest
    ejection ends (checked on read against the clock)."""

    def __init__(self, source: EndpointReader, ejector: Ejector) -> None:
        self.source = source
        self.ejector = ejector
        self._cache: dict[str, tuple[Endpoint, ...]] = {}
        self._transformers: dict[str, tuple[Endpoint, ...]] = {}
        self._valid_until: float | None = None
        self._listeners: list[Listener] = []
        source.subscribe(self._changed)
        ejector.subscribe(self._changed)

    def resolve_model(self, model_name: str) -> ServiceInfo | None:
        return self.source.resolve_model(model_name)

    def services(self) -> list[ServiceInfo]:
        return self.source.services()

    def ready_endpoints(self, service: str) -> tuple[Endpoint, ...]:
        until = self._valid_until
        if until is not None and self.ejector.clock() >= until:
            self._cache.clear()
            self._transformers.clear()
            self._valid_until = self.ejector.next_expiry()
        cached = self._cache.get(service)
        if cached is None:
            every = [e for e in self.source.ready_endpoints(service) if not self.ejector.ejected(e)]
            cached = tuple(e for e in every if e.component == "predictor")
            self._cache[service] = cached
            self._transformers[service] = tuple(e for e in every if e.component == "transformer")
        return cached

    def transformer_endpoints(self, service: str) -> tuple[Endpoint, ...]:
        """The service's ready transformer replicas, ejected ones left out."""
        self.ready_endpoints(service)
        return self._transformers.get(service, ())

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def wake(self, service: str) -> None:
        self.source.wake(service)

    def _changed(self, service: str) -> None:
        self._cache.pop(service, None)
        self._transformers.pop(service, None)
        self._valid_until = self.ejector.next_expiry()
        for listener in self._listeners:
            listener(service)
