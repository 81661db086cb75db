"""The gateway's Prometheus metrics, in a registry of its own (one per app; tests build many apps)."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "llmserve_requests",
            "Requests answered by the gateway, by served model, route and HTTP status.",
            ["model", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "llmserve_request_duration_seconds",
            "Time from request to the end of the response (whole stream included).",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "llmserve_time_to_first_token_seconds",
            "Time from request to the first streamed chunk relayed to the client.",
            ["model", "route"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "llmserve_tokens",
            "Tokens by kind: prompt and completion from the worker's usage; completion_estimated counts stream "
            "chunks of streams that carried no usage (vLLM sends about one chunk per token).",
            ["model", "kind"],
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "llmserve_requests_in_flight",
            "Requests the gateway is working on, by served model.",
            ["model"],
            registry=self.registry,
        )
        self._requests_by = _Children(self._requests)
        self._latency_by = _Children(self._latency)
        self._ttft_by = _Children(self._ttft)
        self._tokens_by = _Children(self._tokens)
        self._in_flight_by = _Children(self._in_flight)

    def requests_in_flight(self, model: str) -> Gauge:
        return self._in_flight_by.get(model)

    def observe(self, model: str, route: str, status: int, seconds: float) -> None:
        self._requests_by.get(model, route, str(status)).inc()
        self._latency_by.get(model, route).observe(seconds)

    def observe_ttft(self, model: str, route: str, seconds: float) -> None:
        self._ttft_by.get(model, route).observe(seconds)

    def count_tokens(self, model: str, kind: str, n: int) -> None:
        if n > 0:
            self._tokens_by.get(model, kind).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)


class _Children(Generic[MetricT]):
    """Labelled children, cached: `labels()` validates its arguments on every call, which the hot path skips."""

    def __init__(self, metric: MetricT) -> None:
        self._metric: MetricT = metric
        self._cache: dict[tuple[str, ...], MetricT] = {}

    def get(self, *labels: str) -> MetricT:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child
