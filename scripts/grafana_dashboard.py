#!/usr/bin/env python3
"""Writes configs/observability/grafana-dashboard.json, the llmserve Grafana dashboard (run it after editing).

The panels are data here, so the JSON stays consistent (ids, grid, datasource) and reviewable as a diff of this
file; tests/integration/test_observability_prometheus.py runs every query of the JSON on a real Prometheus, and
tests/unit/test_grafana_dashboard.py checks that the JSON is what this script writes.

Series come from three places: the gateway's /metrics (`llmserve_*`; in `llmserve up` the controller's series
are served there too), and every worker scraped directly through the controller's HTTP service discovery
(vLLM's `vllm:*`, the V2 runtime's `llmserve_v2_*`), labelled `service` / `replica` / `runtime` by it.

    python scripts/grafana_dashboard.py            # rewrite the JSON
    python scripts/grafana_dashboard.py --check    # exit 1 if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "configs" / "observability" / "grafana-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
S = 'service=~"$service"'
RATE = "[$__rate_interval]"


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[Q]:
    return [
        Q(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in qs
    ]


@dataclass
class Q:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    queries: list[Q]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 8
    overrides: dict[str, Any] = field(default_factory=dict)


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Fleet",
        [
            Panel(
                "Requests / s by model",
                [Q(f"sum by (model) (rate(llmserve_requests_total{{{M}}}{RATE}))", "{{model}}")],
                "reqps",
                "Requests the gateway answered, every route (OpenAI and V2).",
            ),
            Panel(
                "Non-2xx answers / s by model and status",
                [
                    Q(
                        f'sum by (model, status) (rate(llmserve_requests_total{{{M}, status!~"2.."}}{RATE}))',
                        "{{model}} {{status}}",
                    )
                ],
                "reqps",
                "Client errors (4xx; model __unknown__ when the body named none) and server errors (5xx).",
            ),
            Panel(
                "Server-error ratio (5xx) by model",
                [
                    Q(
                        f'(sum by (model) (rate(llmserve_requests_total{{{M}, status=~"5.."}}{RATE})) '
                        f"or sum by (model) (rate(llmserve_requests_total{{{M}}}{RATE})) * 0) "
                        f"/ sum by (model) (rate(llmserve_requests_total{{{M}}}{RATE}))",
                        "{{model}}",
                    )
                ],
                "percentunit",
                "0 rather than no data while there are no 5xx.",
            ),
            Panel(
                "Time to first token (gateway) by model",
                quantiles("llmserve_time_to_first_token_seconds", "model", M),
                "s",
                "From request arrival at the gateway to the first streamed chunk relayed (activator wait included).",
            ),
            Panel(
                "Inter-token latency by model",
                [
                    *quantiles("llmserve_inter_token_latency_seconds", "model", M, (0.5, 0.99)),
                    *[
                        Q(
                            f"histogram_quantile({q}, sum by (le, model_name) "
                            f'(rate(vllm:inter_token_latency_seconds_bucket{{model_name=~"$model"}}{RATE})))',
                            f"engine p{round(q * 100)} {{{{model_name}}}}",
                        )
                        for q in (0.5, 0.99)
                    ],
                ],
                "s",
                "Gateway: gaps between relayed stream chunks (llmserve_inter_token_latency_seconds). Engine: "
                "vLLM's own inter-token latency on the workers.",
            ),
            Panel(
                "End-to-end latency by model",
                quantiles("llmserve_request_duration_seconds", "model", M),
                "s",
                "Request to the end of the response, whole streams included.",
            ),
            Panel(
                "Tokens / s by model",
                [Q(f"sum by (model, kind) (rate(llmserve_tokens_total{{{M}}}{RATE}))", "{{model}} {{kind}}")],
                "short",
                "prompt / completion from the workers' usage; completion_estimated counts chunks of streams "
                "that carried no usage.",
            ),
            Panel(
                "Requests in flight by model",
                [Q(f"sum by (model) (llmserve_requests_in_flight{{{M}}})", "{{model}}")],
            ),
            Panel(
                "Replicas: desired vs ready",
                [
                    Q(f"sum by (service) (llmserve_replicas_desired{{{S}}})", "desired {{service}}"),
                    Q(f"sum by (service) (llmserve_replicas_ready{{{S}}})", "ready {{service}}"),
                ],
            ),
            Panel(
                "Cold starts (in the range)",
                [
                    Q(
                        f"sum by (service) (increase(llmserve_cold_start_seconds_count{{{S}}}[$__range]))",
                        "{{service}}",
                    )
                ],
                kind="stat",
                width=4,
                description="Scale-ups from zero ready replicas to the first ready one.",
            ),
            Panel(
                "Cold-start duration p50",
                [
                    Q(
                        "histogram_quantile(0.5, sum by (le, service) "
                        f"(increase(llmserve_cold_start_seconds_bucket{{{S}}}[$__range])))",
                        "{{service}}",
                    )
                ],
                "s",
                kind="stat",
                width=4,
            ),
            Panel(
                "Activator: requests held",
                [
                    Q(f"sum by (service) (llmserve_activator_queue_depth{{{S}}})", "held {{service}}"),
                    Q(
                        "histogram_quantile(0.99, sum by (le, service) "
                        f"(rate(llmserve_activator_held_seconds_bucket{{{S}}}{RATE})))",
                        "p99 held seconds {{service}}",
                    ),
                ],
                description="Requests waiting for a ready replica (scaled to zero, starting) and how long they waited.",
            ),
            Panel(
                "Replica restarts (in the range)",
                [Q(f"sum by (service) (increase(llmserve_replica_restarts_total{{{S}}}[$__range]))", "{{service}}")],
                kind="stat",
                width=4,
            ),
        ],
    ),
    (
        "Routing and engines (vLLM's own series, scraped on each replica)",
        [
            Panel(
                "Prefix-cache hit rate by service (vLLM's counters)",
                [
                    Q(
                        f"sum by (service) (rate(vllm:prefix_cache_hits_total{{{S}}}{RATE})) "
                        f"/ sum by (service) (rate(vllm:prefix_cache_queries_total{{{S}}}{RATE}))",
                        "{{service}}",
                    )
                ],
                "percentunit",
                "Prompt tokens served from the engines' prefix caches: what token-aware routing is for.",
            ),
            Panel(
                "Prefix hits: router's estimate vs engines",
                [
                    Q(
                        f"sum by (service) (rate(llmserve_routing_prefix_hit_tokens_total{{{S}}}{RATE})) "
                        f"/ sum by (service) (rate(llmserve_routing_prompt_tokens_total{{{S}}}{RATE}))",
                        "estimate {{service}}",
                    ),
                    Q(
                        f"sum by (service) (rate(vllm:prefix_cache_hits_total{{{S}}}{RATE})) "
                        f"/ sum by (service) (rate(vllm:prefix_cache_queries_total{{{S}}}{RATE}))",
                        "engines {{service}}",
                    ),
                ],
                "percentunit",
                "The router's estimate (llmserve_routing_*_tokens_total: the prompts it tokenized, the part it "
                "assumed cached) against vLLM's own hit counters; a gap means the router's index has drifted from "
                "the engines' caches.",
            ),
            Panel(
                "Routing decisions / s by profile and winning scorer",
                [
                    Q(
                        f"sum by (service, profile, scorer) (rate(llmserve_routing_decisions_total{{{S}}}{RATE}))",
                        "{{service}} {{profile}} {{scorer}}",
                    )
                ],
                "ops",
                "The scorer that did most to set the chosen replica apart; only-replica: one candidate, tie: "
                "the picker chose among equals, fallback: the profile failed.",
            ),
            Panel(
                "Queue per replica (engine)",
                [
                    Q(f"sum by (service, replica) (vllm:num_requests_waiting{{{S}}})", "waiting {{replica}}"),
                    Q(f"sum by (service, replica) (vllm:num_requests_running{{{S}}})", "running {{replica}}"),
                ],
            ),
            Panel(
                "KV-cache use per replica",
                [Q(f"max by (service, replica) (vllm:kv_cache_usage_perc{{{S}}})", "{{replica}}")],
                "percentunit",
            ),
            Panel(
                "In flight per replica (gateway's ledger)",
                [Q(f"sum by (service, replica) (llmserve_replica_in_flight{{{S}}})", "{{replica}}")],
                description="Requests this gateway has open on each replica (llmserve_replica_in_flight).",
            ),
            Panel(
                "Engine time to first token p99 per replica",
                [
                    Q(
                        "histogram_quantile(0.99, sum by (le, service, replica) "
                        f"(rate(vllm:time_to_first_token_seconds_bucket{{{S}}}{RATE})))",
                        "{{replica}}",
                    )
                ],
                "s",
                "Inside the engine: compare with the gateway's TTFT to see time spent before the worker.",
            ),
            Panel(
                "Engine queue time p99 per replica",
                [
                    Q(
                        "histogram_quantile(0.99, sum by (le, service, replica) "
                        f"(rate(vllm:request_queue_time_seconds_bucket{{{S}}}{RATE})))",
                        "{{replica}}",
                    )
                ],
                "s",
            ),
            Panel(
                "Preemptions / s per replica",
                [Q(f"sum by (service, replica) (rate(vllm:num_preemptions_total{{{S}}}{RATE}))", "{{replica}}")],
                "ops",
                "KV-cache pressure: requests evicted and recomputed.",
            ),
            Panel(
                "Traffic / s by revision",
                [
                    Q(
                        f'sum by (service, revision) (rate(llmserve_requests_total{{{S}, revision!=""}}{RATE}))',
                        "{{service}} {{revision}}",
                    )
                ],
                "reqps",
                "Requests answered per revision (canary rollouts): the revision label of llmserve_requests_total.",
            ),
        ],
    ),
    (
        "V2 / Open Inference Protocol (predictive models)",
        [
            Panel(
                "V2 requests / s by model",
                [
                    Q(
                        f'sum by (model, route) (rate(llmserve_requests_total{{{M}, route=~"v2_.*|v1_.*"}}{RATE}))',
                        "{{model}} {{route}}",
                    )
                ],
                "reqps",
            ),
            Panel(
                "V2 latency by model (gateway)",
                quantiles("llmserve_request_duration_seconds", "model", f'{M}, route="v2_infer"', (0.5, 0.99)),
                "s",
            ),
            Panel(
                "V2 predict time by model (runtime)",
                quantiles("llmserve_v2_inference_duration_seconds", "model", M, (0.5, 0.99)),
                "s",
                "Decoded request to model output, inside the runtime (batching wait included).",
            ),
            Panel(
                "Batch size: rows per predict call",
                [
                    *quantiles("llmserve_v2_batch_rows", "model", M, (0.5, 0.99)),
                    Q(
                        f"sum by (model) (rate(llmserve_v2_batch_rows_sum{{{M}}}{RATE})) "
                        f"/ sum by (model) (rate(llmserve_v2_batch_rows_count{{{M}}}{RATE}))",
                        "mean {{model}}",
                    ),
                ],
                description="Adaptive batching: rows merged into one call of the model.",
            ),
            Panel(
                "Batch size: requests merged per call",
                quantiles("llmserve_v2_batch_requests", "model", M, (0.5, 0.99)),
            ),
            Panel(
                "Models loaded and memory",
                [
                    Q(f"sum by (model) (llmserve_v2_model_loaded{{{M}}})", "loaded {{model}}"),
                    Q("sum by (service) (llmserve_v2_memory_used_bytes)", "bytes used {{service}}"),
                ],
            ),
        ],
    ),
]


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, row in ROWS:
        panels.append({"id": next_id, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(
                {
                    "id": next_id,
                    "type": panel.kind,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
                    "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
                    if panel.kind == "timeseries"
                    else {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
                    "targets": [
                        {"datasource": DS, "expr": q.expr, "legendFormat": q.legend, "refId": chr(ord("A") + i)}
                        for i, q in enumerate(panel.queries)
                    ],
                }
            )
            next_id, x = next_id + 1, x + panel.width
        y += 8
    return {
        "uid": "llmserve-overview",
        "title": "llmserve",
        "description": "Fleet, routing and V2 overview of an llmserve deployment (configs/observability/README.md).",
        "tags": ["llmserve", "llm", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "hide": 0},
                variable("model", "Model", "label_values(llmserve_requests_total, model)"),
                variable("service", "Service", "label_values(llmserve_replicas_desired, service)"),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON differs from what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
