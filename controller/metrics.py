"""The controller's Prometheus metrics, collected from its state when /metrics is scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from controller.reconciler import Controller

COLD_START_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class ControllerCollector:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        desired = GaugeMetricFamily("llmserve_replicas_desired", "Replicas the controller wants.", labels=["service"])
        ready = GaugeMetricFamily("llmserve_replicas_ready", "Replicas serving requests.", labels=["service"])
        restarts = CounterMetricFamily(
            "llmserve_replica_restarts", "Replica restarts after crashes or failed health checks.", labels=["service"]
        )
        cold = HistogramMetricFamily(
            "llmserve_cold_start_seconds",
            "From scaling up at zero ready replicas to the first ready replica.",
            labels=["service"],
        )
        per_revision = ["service", "revision"]
        revision_desired = GaugeMetricFamily(
            "llmserve_revision_replicas_desired", "Replicas the controller wants, per revision.", labels=per_revision
        )
        revision_ready = GaugeMetricFamily(
            "llmserve_revision_replicas_ready", "Replicas serving requests, per revision.", labels=per_revision
        )
        traffic = GaugeMetricFamily(
            "llmserve_revision_traffic_percent",
            "Share of the service's traffic sent to the revision (the split).",
            labels=per_revision,
        )
        for state in self.controller.status():
            name = state["name"]
            for revision in state["revisions"]:
                labels = [name, revision["name"]]
                revision_desired.add_metric(labels, revision["desired_replicas"])
                revision_ready.add_metric(labels, revision["ready_replicas"])
                traffic.add_metric(labels, revision["traffic_percent"])
            desired.add_metric([name], state["desired_replicas"])
            ready.add_metric([name], state["ready_replicas"])
            restarts.add_metric([name], sum(r["restarts"] for r in state["replicas"]))
            durations = self.controller.cold_starts(name)
            buckets = [(repr(bound), float(sum(d <= bound for d in durations))) for bound in COLD_START_BUCKETS] + [
                ("+Inf", float(len(durations)))
            ]
            cold.add_metric([name], buckets, sum(durations))
        yield from (desired, ready, restarts, cold, revision_desired, revision_ready, traffic)
        pool = self.controller.backend.describe().get("warm_pool")
        if pool is not None:
            processes = GaugeMetricFamily(
                "llmserve_warm_pool_processes", "Warm-pool processes by state (idle: ready to bind).", labels=["state"]
            )
            states = [p["state"] for p in pool["processes"]]
            for pool_state in ("starting", "idle", "binding", "serving"):
                processes.add_metric([pool_state], states.count(pool_state))
            yield processes
            yield GaugeMetricFamily("llmserve_warm_pool_size", "Warm-pool processes kept ready.", value=pool["size"])
