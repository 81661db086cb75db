"""The gateway's Prometheus metrics, in a registry of its own (one per app; tests build many apps).

The hot path only bumps plain counters in dicts (no locks, no label validation); a collector turns them into
Prometheus families when /metrics is scraped. The gateway is one event-loop thread, so no locking is needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from gateway.ledger import LoadLedger
from gateway.routing.decision import Decision
from llmserve.endpoints import EndpointReader

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HELD_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)

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
        self._requests: dict[tuple[str, str, str, str, str], int] = {}
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._ttft: dict[tuple[str, str], _Histogram] = {}
        self._itl: dict[tuple[str, str], _Histogram] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._held_time: dict[tuple[str, str], _Histogram] = {}
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._routed_tokens: dict[str, list[int]] = {}  # service -> [prompt tokens, prefix-hit tokens]
        self._declared: Callable[[], Iterable[str]] = tuple
        self.registry.register(_Collector(self))

    def declare(self, services: Callable[[], Iterable[str]]) -> None:
        """Where the declared services' names come from: their activator series exist at 0 from the start (a
        series that first appears at 1 is no increase to Prometheus)."""
        self._declared = services

    # -- hot path -------------------------------------------------------------------------------------------------
    def observe(
        self, model: str, route: str, status: int, seconds: float, service: str = "", revision: str = ""
    ) -> None:
        key = (model, route, str(status), service, revision)
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

    def inter_token(self, model: str, route: str) -> Callable[[float], None]:
        """What a stream's relay calls with each gap between two chunks it relayed."""
        histogram = self._itl.get((model, route))
        if histogram is None:
            histogram = self._itl[(model, route)] = _Histogram(ITL_BUCKETS)
        return histogram.observe

    def count_decision(self, service: str, decision: Decision) -> None:
        key = (service, decision.profile, decision.scorer)
        self._decisions[key] = self._decisions.get(key, 0) + 1
        if decision.prompt_tokens is not None:
            counts = self._routed_tokens.get(service)
            if counts is None:
                counts = self._routed_tokens[service] = [0, 0]
            counts[0] += decision.prompt_tokens
            counts[1] += decision.prefix_hit_tokens or 0

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
            "Requests answered by the gateway, by served model, route and HTTP status, and the service and "
            "revision that answered (empty when none was reached).",
            labels=["model", "route", "status", "service", "revision"],
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
        yield self._histograms(
            "llmserve_inter_token_latency_seconds",
            "Gaps between two chunks of a stream as the gateway relayed them (vLLM sends about one token per chunk).",
            self._itl,
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
        held = dict(self._held_time)
        for service in self._declared():
            if (service, "") not in held:
                held[(service, "")] = _Histogram(HELD_BUCKETS)
        for (service, _), histogram in held.items():
            held_time.add_metric([service], histogram.buckets(), histogram.total)
        yield held_time
        decisions = CounterMetricFamily(
            "llmserve_routing_decisions",
            "Routing decisions by service, profile and the scorer that won them (only-replica: one candidate; tie: "
            "no scorer set the chosen replica apart; fallback: the profile failed; a picker's name: no scorers).",
            labels=["service", "profile", "scorer"],
        )
        for decided, count in list(self._decisions.items()):
            decisions.add_metric(list(decided), count)
        yield decisions
        prompt = CounterMetricFamily(
            "llmserve_routing_prompt_tokens",
            "Prompt tokens of the requests routing tokenized (those with a choice of replicas).",
            labels=["service"],
        )
        hits = CounterMetricFamily(
            "llmserve_routing_prefix_hit_tokens",
            "Of llmserve_routing_prompt_tokens, those the chosen replica was estimated to hold in its prefix cache.",
            labels=["service"],
        )
        for service, (prompt_tokens, hit_tokens) in list(self._routed_tokens.items()):
            prompt.add_metric([service], prompt_tokens)
            hits.add_metric([service], hit_tokens)
        yield prompt
        yield hits

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
        per_replica = GaugeMetricFamily(
            "llmserve_replica_in_flight",
            "Requests this gateway has in flight on each replica (its load ledger), by service and replica id.",
            labels=["service", "replica"],
        )
        revision_in_flight = GaugeMetricFamily(
            "llmserve_revision_requests_in_flight",
            "Requests dispatched to a replica whose response has not ended, by served model and revision.",
            labels=["model", "revision"],
        )
        routed = CounterMetricFamily(
            "llmserve_revision_requests_routed",
            "Requests dispatched to a replica, by served model and revision (the traffic split as it happened).",
            labels=["model", "revision"],
        )
        loads = self._ledger.services()
        for info in self._endpoints.services():  # every declared service, at 0 until it has traffic
            load = loads.get(info.name)
            in_flight.add_metric([info.model_name], load.in_flight if load is not None else 0)
            held.add_metric([info.name], load.held if load is not None else 0)
            for revision, share in list(load.revisions.items()) if load is not None else ():
                if revision:
                    revision_in_flight.add_metric([info.model_name, revision], share.in_flight)
                    routed.add_metric([info.model_name, revision], share.arrived)
        for replica, endpoint_load in list(self._ledger.loads.items()):
            per_replica.add_metric([endpoint_load.endpoint.service, replica], endpoint_load.in_flight)
        yield in_flight
        yield held
        yield per_replica
        yield revision_in_flight
        yield routed


class _Collector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()
