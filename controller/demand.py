"""Demand summed over every live gateway: what the autoscaler reads.

Each gateway reports its own demand per service about once a second (a sequence number orders its reports); the
aggregator keeps each gateway's latest report and sums them, as Knative's autoscaler sums the stats its activators
and queue-proxies push. A gateway that has not reported for `stale_after_s` is dropped from the sum. The per-gateway
`arrived` counters are turned into one counter that only grows (a gateway that restarts or is dropped does not make
it go back), so "requests came and went between two ticks" still shows.

Reports may break a service's demand down per revision (the revision each request went to); the autoscaler scales
each revision on its own share (`revision_demand`). A report without the breakdown (an older gateway) counts under
revision "".

Implements llmserve.endpoints.DemandReader. An injected clock; no timers of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llmserve.endpoints import Demand

Key = tuple[str, str | None]  # (service, revision); revision None: the service as a whole


@dataclass
class _Gateway:
    seq: int
    seen_at: float
    demands: dict[Key, Demand]
    arrived: dict[Key, int] = field(default_factory=dict)  # its last counter values


class DemandAggregator:
    def __init__(self, *, stale_after_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._gateways: dict[str, _Gateway] = {}
        self._arrived: dict[Key, int] = {}  # one growing counter per service (and revision), over all gateways

    def report(self, gateway: str, seq: int, services: Mapping[str, Demand]) -> bool:
        """Take a gateway's report; False (ignored) when it is older than one already taken."""
        now = self.clock()
        known = self._gateways.get(gateway)
        if known is not None and seq <= known.seq:
            return False
        demands: dict[Key, Demand] = {}
        for name, demand in services.items():
            demands[(name, None)] = demand
            if demand.revisions:
                demands.update(((name, revision), share) for revision, share in demand.revisions.items())
            else:
                demands[(name, "")] = demand  # not broken down: the unattributed share is all of it
        previous = known.arrived if known is not None else {}
        for key, demand in demands.items():
            grew = demand.arrived - previous.get(key, 0)
            if grew > 0:
                self._arrived[key] = self._arrived.get(key, 0) + grew
        self._gateways[gateway] = _Gateway(seq, now, demands, {key: d.arrived for key, d in demands.items()})
        return True

    def demand(self, service: str) -> Demand:
        return self._sum((service, None))

    def revision_demand(self, service: str, revision: str) -> Demand:
        """The demand for one revision of a service (revision "": what gateways reported unattributed)."""
        return self._sum((service, revision))

    def _sum(self, key: Key) -> Demand:
        in_flight = in_flight_tokens = held = held_tokens = 0
        for gateway in self._live():
            seen = gateway.demands.get(key)
            if seen is not None:
                in_flight += seen.in_flight
                in_flight_tokens += seen.in_flight_tokens
                held += seen.held
                held_tokens += seen.held_tokens
        return Demand(in_flight, in_flight_tokens, held, held_tokens, self._arrived.get(key, 0))

    def gateways(self) -> list[dict[str, object]]:
        """Live gateways, for status reports."""
        now = self.clock()
        return [
            {"id": gid, "seq": g.seq, "last_report_s_ago": round(now - g.seen_at, 2)}
            for gid, g in self._gateways.items()
            if now - g.seen_at <= self.stale_after_s
        ]

    def _live(self) -> list[_Gateway]:
        now = self.clock()
        for gid in [gid for gid, g in self._gateways.items() if now - g.seen_at > self.stale_after_s]:
            del self._gateways[gid]
        return list(self._gateways.values())
