"""The gateway's Prometheus metrics, in a registry of its own (one per app; tests build many apps).

The hot path only bumps plain counters in dicts (no locks, no label validation); a collector turns them into
Prometheus families when /metrics is scraped. The gateway is one event-loop thread, so no locking is needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from gateway.ledger import LoadLedger
from llmserve.endpoints import EndpointReader

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HELD_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return out


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._ttft: dict[tuple[str, str], _Histogram] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._held_time: dict[tuple[str, str], _Histogram] = {}
        self.registry.register(_Collector(self))

    # -- hot path -------------------------------------------------------------------------------------------------
    def observe(self, model: str, route: str, status: int, seconds: float) -> None:
        key = (model, route, str(status))
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._latency.get((model, route))
        if histogram is None:
            histogram = self._latency[(model, route)] = _Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def observe_ttft(self, model: str, route: str, seconds: float) -> None:
        histogram = self._ttft.get((model, route))
        if histogram is None:
            histogram = self._ttft[(model, route)] = _Histogram(TTFT_BUCKETS)
        histogram.observe(seconds)

    def observe_held(self, service: str, seconds: float) -> None:
        histogram = self._held_time.get((service, ""))
        if histogram is None:
            histogram = self._held_time[(service, "")] = _Histogram(HELD_BUCKETS)
        histogram.observe(seconds)

    def count_tokens(self, model: str, kind: str, n: int) -> None:
        if n > 0:
            self._tokens[(model, kind)] = self._tokens.get((model, kind), 0) + n

    # -- scrape ---------------------------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "llmserve_requests",
            "Requests answered by the gateway, by served model, route and HTTP status.",
            labels=["model", "route", "status"],
        )
        for labels, count in list(self._requests.items()):
            requests.add_metric(list(labels), count)
        yield requests
        yield self._histograms(
            "llmserve_request_duration_seconds",
            "Time from request to the end of the response (whole stream included).",
            self._latency,
        )
        yield self._histograms(
            "llmserve_time_to_first_token_seconds",
            "Time from request to the first streamed chunk relayed to the client.",
            self._ttft,
        )
        tokens = CounterMetricFamily(
            "llmserve_tokens",
            "Tokens by kind: prompt and completion from the worker's usage; completion_estimated counts stream "
            "chunks of streams that carried no usage (vLLM sends about one chunk per token).",
            labels=["model", "kind"],
        )
        for (model, kind), count in list(self._tokens.items()):
            tokens.add_metric([model, kind], count)
        yield tokens
        held_time = HistogramMetricFamily(
            "llmserve_activator_held_seconds", "How long requests waited in the activator.", labels=["service"]
        )
        for (service, _), histogram in list(self._held_time.items()):
            held_time.add_metric([service], histogram.buckets(), histogram.total)
        yield held_time

    @staticmethod
    def _histograms(name: str, documentation: str, series: dict[tuple[str, str], _Histogram]) -> Metric:
        family = HistogramMetricFamily(name, documentation, labels=["model", "route"])
        for (model, route), histogram in list(series.items()):
            family.add_metric([model, route], histogram.buckets(), histogram.total)
        return family


class LedgerCollector:
    """Gauges read from the gateway's load ledger when /metrics is scraped: requests in flight to replicas (by
    served model) and requests held by the activator (by service)."""

    def __init__(self, ledger: LoadLedger, endpoints: EndpointReader) -> None:
        self._ledger = ledger
        self._endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "llmserve_requests_in_flight",
            "Requests dispatched to a replica whose response has not ended, by served model.",
            labels=["model"],
        )
        held = GaugeMetricFamily(
            "llmserve_activator_queue_depth",
            "Requests the activator holds because their service has no ready replica.",
            labels=["service"],
        )
        models = {info.name: info.model_name for info in self._endpoints.services()}
        for service, load in list(self._ledger.services().items()):
            model = models.get(service)
            if model is not None:
                in_flight.add_metric([model], load.in_flight)
                held.add_metric([service], load.held)
        yield in_flight
        yield held


class _Collector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()
