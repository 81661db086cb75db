"""Demand summed over every live gateway: what the autoscaler reads.

Each gateway reports its own demand per service about once a second (a sequence number orders its reports); the
aggregator keeps each gateway's latest report and sums them, as Knative's autoscaler sums the stats its activators
and queue-proxies push. A gateway that has not reported for `stale_after_s` is dropped from the sum. The per-gateway
`arrived` counters are turned into one counter that only grows (a gateway that restarts or is dropped does not make
it go back), so "requests came and went between two ticks" still shows.

Implements llmserve.endpoints.DemandReader. An injected clock; no timers of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llmserve.endpoints import Demand


@dataclass
class _Gateway:
    seq: int
    seen_at: float
    services: dict[str, Demand]
    arrived: dict[str, int] = field(default_factory=dict)  # its last counter value per service


class DemandAggregator:
    def __init__(self, *, stale_after_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._gateways: dict[str, _Gateway] = {}
        self._arrived: dict[str, int] = {}  # one growing counter per service, over all gateways

    def report(self, gateway: str, seq: int, services: Mapping[str, Demand]) -> bool:
        """Take a gateway's report; False (ignored) when it is older than one already taken."""
        now = self.clock()
        known = self._gateways.get(gateway)
        if known is not None and seq <= known.seq:
            return False
        previous = known.arrived if known is not None else {}
        for name, demand in services.items():
            grew = demand.arrived - previous.get(name, 0)
            if grew > 0:
                self._arrived[name] = self._arrived.get(name, 0) + grew
        self._gateways[gateway] = _Gateway(seq, now, dict(services), {name: d.arrived for name, d in services.items()})
        return True

    def demand(self, service: str) -> Demand:
        in_flight = in_flight_tokens = held = held_tokens = 0
        for gateway in self._live():
            seen = gateway.services.get(service)
            if seen is not None:
                in_flight += seen.in_flight
                in_flight_tokens += seen.in_flight_tokens
                held += seen.held
                held_tokens += seen.held_tokens
        return Demand(in_flight, in_flight_tokens, held, held_tokens, self._arrived.get(service, 0))

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
