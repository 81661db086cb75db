"""Per-service demand as the gateway sees it: requests held, in flight, and arrived (read by the autoscaler)."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.endpoints import Demand


@dataclass(slots=True)
class _Counts:
    in_flight: int = 0
    in_flight_tokens: int = 0
    held: int = 0
    held_tokens: int = 0
    arrived: int = 0


class DemandTracker:
    """Implements llmserve.endpoints.DemandReader; the proxy and the activator keep it current."""

    def __init__(self) -> None:
        self._counts: dict[str, _Counts] = {}

    def _of(self, service: str) -> _Counts:
        counts = self._counts.get(service)
        if counts is None:
            counts = self._counts[service] = _Counts()
        return counts

    def arrived(self, service: str) -> None:
        self._of(service).arrived += 1

    def hold(self, service: str, tokens: int) -> None:
        counts = self._of(service)
        counts.held += 1
        counts.held_tokens += tokens

    def unhold(self, service: str, tokens: int) -> None:
        counts = self._of(service)
        counts.held -= 1
        counts.held_tokens -= tokens

    def start(self, service: str, tokens: int) -> None:
        counts = self._of(service)
        counts.in_flight += 1
        counts.in_flight_tokens += tokens

    def finish(self, service: str, tokens: int) -> None:
        counts = self._of(service)
        counts.in_flight -= 1
        counts.in_flight_tokens -= tokens

    def demand(self, service: str) -> Demand:
        c = self._of(service)
        return Demand(c.in_flight, c.in_flight_tokens, c.held, c.held_tokens, c.arrived)
