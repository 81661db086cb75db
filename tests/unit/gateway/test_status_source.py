"""gateway/ui/source.py: the controller's status with the gateway's own knowledge added, fetched once per
max_age_s however many pages ask; gateway/recent_errors.py."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.activator import Activator, ActivatorSettings
from gateway.ledger import LoadLedger
from gateway.metrics import GatewayMetrics
from gateway.recent_errors import RecentErrors
from gateway.ui.source import GatewayStatus
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.protocol.vllm_metrics import Scraped

CHAT_0 = Endpoint("chat", "chat-0", "http://127.0.0.1:41000", revision="chat-00002")


def controller_status() -> dict[str, Any]:
    return {
        "services": [
            {"name": "chat", "protocol": "openai",
             "revisions": [{"name": "chat-00001", "traffic_percent": 0},
                           {"name": "chat-00002", "traffic_percent": 100}],
             "replicas": [{"id": "chat-0", "state": "ready", "url": CHAT_0.url},
                          {"id": "chat-1", "state": "starting", "url": None}]},
            {"name": "iris", "protocol": "v2", "revisions": [],
             "replicas": [{"id": "iris-0", "state": "ready", "url": "http://127.0.0.1:42000"}]},
        ],
        "backend": {"name": "local"},
    }  # fmt: skip


class Controller:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0.01)
        return controller_status()


async def test_enriched_with_loads_rotation_activator_and_errors() -> None:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    registry.declare_service(ServiceInfo(name="iris", model_name="iris", protocol="v2"))
    registry.publish(CHAT_0)
    ledger = LoadLedger()
    ledger.record_scrape(CHAT_0, Scraped(running=2.0, waiting=1.0, kv_usage=0.25), now=1.0)
    ledger.dispatch(CHAT_0, 10)
    iris = Endpoint("iris", "iris-0", "http://127.0.0.1:42000")
    ledger.record_scrape(iris, Scraped(), now=1.0)  # a V2 runtime: no vLLM signals
    errors = RecentErrors(size=2, clock=iter([1.0, 2.0, 3.0]).__next__)
    for n in range(3):
        errors.add("chat", 502, f"worker failed {n}")
    activator = Activator(registry, ActivatorSettings(), ledger, GatewayMetrics())
    now = [0.0]
    controller = Controller()
    source = GatewayStatus(controller, ledger, activator, errors, registry, max_age_s=1.0, clock=lambda: now[0])

    first, second = await asyncio.gather(source(), source())
    assert controller.calls == 1  # two pages, one fetch
    chat, iris_status = first["services"]
    assert chat["replicas"][0]["load"] == {"in_flight": 1, "running": 2, "waiting": 1, "kv_cache_usage": 0.25}
    assert chat["replicas"][1]["load"] is None
    assert [r["in_rotation"] for r in chat["revisions"]] == [0, 1]
    assert iris_status["replicas"][0]["load"] == {"in_flight": 0, "running": None, "waiting": None,
                                                  "kv_cache_usage": None}  # fmt: skip
    assert first["activator"] == {"chat": 0, "iris": 0}
    assert [e["message"] for e in first["errors"]] == ["worker failed 2", "worker failed 1"]  # newest first, bounded
    assert first["errors"][0] == {"time": 3.0, "service": "chat", "status": 502, "message": "worker failed 2"}
    assert first["gateway"]["chat"] == {"in_flight": 1, "held": 0}
    assert first["backend"] == {"name": "local"}
    assert second == first

    now[0] = 2.0
    await source()
    assert controller.calls == 2  # older than max_age_s: fetched again
