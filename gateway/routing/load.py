"""What routing knows about each replica: signals scraped from its /metrics, merged with the gateway's own counts.

Scrapes are periodic (and so a little old); the gateway's in-flight counts are exact for the traffic it sent.
The merged estimate adds the requests this gateway started since the last scrape to the scraped queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.endpoints import Endpoint
from llmserve.protocol.vllm_metrics import Scraped


@dataclass(slots=True)
class EndpointLoad:
    endpoint: Endpoint
    scraped: Scraped | None = None
    scraped_at: float | None = None  # monotonic seconds
    scrape_failures: int = 0
    in_flight: int = 0  # requests this gateway has open to the replica
    in_flight_tokens: int = 0  # their prompt + expected output tokens
    pending_prefill: int = 0  # uncached prompt tokens of requests sent there whose first token has not come back
    in_flight_at_scrape: int = 0

    def stale(self, now: float, stale_after_s: float) -> bool:
        return self.scraped_at is None or now - self.scraped_at > stale_after_s or self.scrape_failures > 0

    @property
    def queued(self) -> float:
        """Waiting requests: scraped, plus what this gateway sent since that scrape."""
        since = max(0, self.in_flight - self.in_flight_at_scrape)
        return (self.scraped.waiting if self.scraped else 0.0) + since

    @property
    def requests(self) -> float:
        """Running + waiting requests, the freshest estimate we have."""
        if self.scraped is None:
            return float(self.in_flight)
        since = max(0, self.in_flight - self.in_flight_at_scrape)
        return max(self.scraped.running + self.scraped.waiting + since, float(self.in_flight))

    @property
    def kv_usage(self) -> float:
        return self.scraped.kv_usage if self.scraped else 0.0


@dataclass
class LoadBoard:
    """Loads of every replica the gateway routes to, by replica id."""

    loads: dict[str, EndpointLoad] = field(default_factory=dict)

    def get(self, endpoint: Endpoint) -> EndpointLoad:
        load = self.loads.get(endpoint.replica_id)
        if load is None or load.endpoint.url != endpoint.url:  # a restarted replica is a new one
            load = self.loads[endpoint.replica_id] = EndpointLoad(endpoint)
        return load

    def record_scrape(self, endpoint: Endpoint, scraped: Scraped | None, now: float) -> None:
        load = self.get(endpoint)
        if scraped is None:
            load.scrape_failures += 1
            return
        load.scraped = scraped
        load.scraped_at = now
        load.scrape_failures = 0
        load.in_flight_at_scrape = load.in_flight

    def started(self, endpoint: Endpoint, tokens: int) -> None:
        load = self.get(endpoint)
        load.in_flight += 1
        load.in_flight_tokens += tokens

    def finished(self, endpoint: Endpoint, tokens: int) -> None:
        load = self.loads.get(endpoint.replica_id)
        if load is not None and load.endpoint.url == endpoint.url:
            load.in_flight = max(0, load.in_flight - 1)
            load.in_flight_tokens = max(0, load.in_flight_tokens - tokens)
            load.in_flight_at_scrape = min(load.in_flight_at_scrape, load.in_flight)

    def prefill_started(self, endpoint: Endpoint, tokens: int) -> None:
        self.get(endpoint).pending_prefill += tokens

    def prefill_finished(self, endpoint: Endpoint, tokens: int) -> None:
        load = self.loads.get(endpoint.replica_id)
        if load is not None and load.endpoint.url == endpoint.url:
            load.pending_prefill = max(0, load.pending_prefill - tokens)

    def forget_except(self, live: set[str]) -> None:
        for replica_id in [r for r in self.loads if r not in live]:
            del self.loads[replica_id]
