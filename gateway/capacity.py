"""Per-replica load caps: how much this gateway may have in flight on one replica, read against the load ledger.

A service's cap comes from its spec (`spec.predictor.routing.maxRequestsPerReplica` / `maxTokensPerReplica`, on
`ServiceInfo`), else from the gateway's defaults (`GatewaySettings.max_requests_per_replica`, 256, and
`max_tokens_per_replica`, none). A replica is *open* while its requests in flight are below the request cap and the
request's tokens (prompt + expected output) fit under the token cap; a request larger than the token cap is let onto
a replica with nothing in flight (it could never fit otherwise). When no ready replica is open the request waits in
the activator's one queue (gateway/activator.py) for a slot to free, so the backlog stays in the gateway, bounded,
instead of piling up inside vLLM.

Counts are this gateway's own (the ledger's exact in-flight counts): with several gateway processes each keeps its
own cap per replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.ledger import LoadLedger
from llmserve.endpoints import Endpoint, ServiceInfo

UNLIMITED = 1 << 30  # free slots of a service without a request cap


@dataclass(frozen=True, slots=True)
class ReplicaCap:
    requests: int | None = None  # requests in flight per replica; None: no cap
    tokens: int | None = None  # prompt + expected output tokens in flight per replica; None: no cap


class Capacity:
    def __init__(self, ledger: LoadLedger, default: ReplicaCap) -> None:
        self.ledger = ledger
        self.default = default

    def cap(self, service: ServiceInfo) -> ReplicaCap:
        requests = service.max_requests_per_replica or self.default.requests
        tokens = service.max_tokens_per_replica or self.default.tokens
        if requests == self.default.requests and tokens == self.default.tokens:
            return self.default
        return ReplicaCap(requests, tokens)

    def open(self, service: ServiceInfo, endpoints: Sequence[Endpoint], tokens: int) -> Sequence[Endpoint]:
        """The replicas among `endpoints` that can take a request of `tokens` now (all of them without caps)."""
        cap = self.cap(service)
        if cap.requests is None and cap.tokens is None:
            return endpoints
        current = self.ledger.current
        opened = []
        for endpoint in endpoints:
            load = current(endpoint)
            if load is None or _fits(cap, load.in_flight, load.in_flight_tokens, tokens):
                opened.append(endpoint)
        return opened if len(opened) < len(endpoints) else endpoints

    def free_slots(self, service: ServiceInfo, endpoints: Sequence[Endpoint]) -> int:
        """Requests the replicas can still take under the request cap (UNLIMITED without one)."""
        limit = self.cap(service).requests
        if limit is None:
            return UNLIMITED
        current = self.ledger.current
        free = 0
        for endpoint in endpoints:
            load = current(endpoint)
            free += limit - min(limit, load.in_flight) if load is not None else limit
        return free

    def exceeded(self, service: ServiceInfo, endpoint: Endpoint) -> bool:
        """Whether the replica is over its cap with a request just dispatched to it counted (two requests took its
        last slot at once: the later one goes back to the queue)."""
        cap = self.cap(service)
        if cap.requests is None and cap.tokens is None:
            return False
        load = self.ledger.current(endpoint)
        if load is None:
            return False
        over_requests = cap.requests is not None and load.in_flight > cap.requests
        over_tokens = cap.tokens is not None and load.in_flight > 1 and load.in_flight_tokens > cap.tokens
        return over_requests or over_tokens


def _fits(cap: ReplicaCap, in_flight: int, in_flight_tokens: int, tokens: int) -> bool:
    if cap.requests is not None and in_flight >= cap.requests:
        return False
    return cap.tokens is None or in_flight == 0 or in_flight_tokens + tokens <= cap.tokens
