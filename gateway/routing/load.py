"""What routing knows about one replica: signals scraped from its /metrics, merged with the gateway's own counts
(kept by the gateway's load ledger, gateway/ledger.py).

Scrapes are periodic (and so a little old); the gateway's in-flight counts are exact for the traffic it sent.
The merged estimate adds the requests this gateway started since the last scrape to the scraped queue.
"""

from __future__ import annotations

from dataclasses import dataclass

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
