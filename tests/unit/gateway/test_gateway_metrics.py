"""The gateway's own series (gateway/metrics.py): what /metrics shows before and after traffic."""

from __future__ import annotations

from gateway.ledger import LoadLedger
from gateway.metrics import GatewayMetrics, LedgerCollector
from gateway.routing.decision import Decision
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo


def metrics_text(metrics: GatewayMetrics) -> str:
    return metrics.render().decode()


def test_declared_services_have_their_activator_and_in_flight_series_at_zero() -> None:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="smollm2"))
    registry.declare_service(ServiceInfo(name="iris", model_name="iris", protocol="v2", min_replicas=0))
    metrics, ledger = GatewayMetrics(), LoadLedger()
    metrics.registry.register(LedgerCollector(ledger, registry))
    metrics.declare(lambda: [s.name for s in registry.services()])
    text = metrics_text(metrics)
    for line in ('llmserve_activator_queue_depth{service="iris"} 0.0',
                 'llmserve_activator_held_seconds_count{service="iris"} 0.0',
                 'llmserve_activator_held_seconds_count{service="chat"} 0.0',
                 'llmserve_requests_in_flight{model="smollm2"} 0.0'):  # fmt: skip
        assert line in text, text

    endpoint = Endpoint("chat", "chat-0", "http://127.0.0.1:1")
    held = ledger.dispatch(endpoint, 10)
    metrics.observe_held("iris", 1.5)
    text = metrics_text(metrics)
    assert 'llmserve_replica_in_flight{replica="chat-0",service="chat"} 1.0' in text
    assert 'llmserve_requests_in_flight{model="smollm2"} 1.0' in text
    assert 'llmserve_activator_held_seconds_count{service="iris"} 1.0' in text
    held.release()
    assert 'llmserve_replica_in_flight{replica="chat-0",service="chat"} 0.0' in metrics_text(metrics)


def test_requests_decisions_routed_tokens_and_inter_token_gaps() -> None:
    metrics = GatewayMetrics()
    metrics.observe("smollm2", "chat_completions", 200, 0.5, "chat", "chat-00002")
    metrics.observe("__unknown__", "chat_completions", 404, 0.001)
    metrics.count_decision("chat", Decision("token-aware", "prefix-cache", 100, 80))
    metrics.count_decision("chat", Decision("token-aware", "prefix-cache", 50, 0))
    metrics.count_decision("chat", Decision("token-aware", "only-replica"))  # not tokenized: no token counts
    gap = metrics.inter_token("smollm2", "chat_completions")
    for seconds in (0.02, 0.03, 0.5):
        gap(seconds)
    text = metrics_text(metrics)
    assert ('llmserve_requests_total{model="smollm2",revision="chat-00002",route="chat_completions",'
            'service="chat",status="200"} 1.0') in text  # fmt: skip
    assert 'llmserve_requests_total{model="__unknown__",revision="",route="chat_completions",service=""' in text
    assert 'llmserve_routing_decisions_total{profile="token-aware",scorer="prefix-cache",service="chat"} 2.0' in text
    assert 'llmserve_routing_decisions_total{profile="token-aware",scorer="only-replica",service="chat"} 1.0' in text
    assert 'llmserve_routing_prompt_tokens_total{service="chat"} 150.0' in text
    assert 'llmserve_routing_prefix_hit_tokens_total{service="chat"} 80.0' in text
    assert 'llmserve_inter_token_latency_seconds_count{model="smollm2",route="chat_completions"} 3.0' in text
    assert 'llmserve_inter_token_latency_seconds_bucket{le="0.04",model="smollm2",route="chat_completions"} 2.0' in text
