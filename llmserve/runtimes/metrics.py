"""Prometheus metrics of the predictive runtime (served on GET /metrics), in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmserve_v2_inference_requests", "Inference and explain requests, by model and HTTP-style status.",
            ["model", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "llmserve_v2_inference_duration_seconds", "Time from decoded request to model output, by model.",
            ["model"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "llmserve_v2_batch_rows", "Rows per predict call after adaptive batching.", ["model"], buckets=_ROWS,
            registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "llmserve_v2_batch_requests", "Requests merged per predict call.", ["model"], buckets=_ROWS, registry=r
        )
        self.loads = Counter("llmserve_v2_model_loads", "Model loads (startup, on demand, API).", ["model"], registry=r)
        self.unloads = Counter(
            "llmserve_v2_model_unloads", "Model unloads, by reason: evicted (memory budget, LRU) or api.",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.loaded = Gauge("llmserve_v2_model_loaded", "1 while the model is in memory.", ["model"], registry=r)
        self.memory_used = Gauge(
            "llmserve_v2_memory_used_bytes", "Memory charged to loaded models against the budget.", registry=r
        )
        self.memory_budget = Gauge(
            "llmserve_v2_memory_budget_bytes", "The memory budget for loaded models (0: unlimited).", registry=r
        )
        self._request_counters: dict[tuple[str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def request_done(self, model: str, status: int, seconds: float | None) -> None:
        """Hot path: label children are cached."""
        key = (model, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(model, str(status))
        counter.inc()
        if seconds is not None:
            histogram = self._durations.get(model)
            if histogram is None:
                histogram = self._durations[model] = self.duration.labels(model)
            histogram.observe(seconds)

    def observer(self, model: str) -> tuple[Histogram, Histogram]:
        return self.batch_rows.labels(model), self.batch_requests.labels(model)

    def render(self) -> bytes:
        return generate_latest(self.registry)
