"""The controller's status -> Prometheus HTTP-SD target groups (controller/prometheus_sd.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.prometheus_sd import prometheus_targets
from controller.reconciler import Controller
from llmserve.endpoints import EndpointRegistry
from llmserve.spec import parse_services
from llmserve.workers import WorkerPlan
from tests.support.fake_backend import FakeBackend
from tests.support.waiting import until
from tests.unit.controller.test_controller import FAST


def replica(rid: str, state: str = "ready", url: str | None = "http://127.0.0.1:9001", **extra: Any) -> dict[str, Any]:
    return {"id": rid, "state": state, "url": url, "pid": 1, "restarts": 0, **extra}


def status(*services: dict[str, Any]) -> dict[str, Any]:
    return {"services": list(services), "backend": {"name": "local"}}


def test_one_group_per_ready_replica_with_join_labels() -> None:
    body = status(
        {"name": "chat", "runtime": "vllm", "replicas": [replica("chat-0", url="http://127.0.0.1:9001")]},
        {"name": "iris", "runtime": "llmserve-v2", "replicas": [replica("iris-3", url="http://10.0.0.7:8000")]},
    )
    assert prometheus_targets(body) == [
        {
            "targets": ["127.0.0.1:9001"],
            "labels": {"__scheme__": "http", "__metrics_path__": "/metrics", "service": "chat",
                       "replica": "chat-0", "runtime": "vllm"},
        },
        {
            "targets": ["10.0.0.7:8000"],
            "labels": {"__scheme__": "http", "__metrics_path__": "/metrics", "service": "iris",
                       "replica": "iris-3", "runtime": "llmserve-v2"},
        },
    ]  # fmt: skip


def test_replicas_not_serving_are_left_out() -> None:
    body = status(
        {
            "name": "chat",
            "runtime": "vllm",
            "replicas": [
                replica("chat-0", state="starting"),
                replica("chat-1", state="backoff", url=None),
                replica("chat-2", state="stopping"),
                replica("chat-3", state="ready", url=None),
            ],
        }
    )
    assert prometheus_targets(body) == []
    assert prometheus_targets(status()) == []
    assert prometheus_targets({}) == []


def test_groups_are_sorted_and_serialise_as_prometheus_reads_them() -> None:
    body = status(
        {"name": "b", "runtime": "vllm-sim", "replicas": [replica("b-1", url="http://h:2"), replica("b-0", url="http://h:1")]},
        {"name": "a", "runtime": "vllm-sim", "replicas": [replica("a-0", url="http://h:3")]},
    )  # fmt: skip
    groups = prometheus_targets(body)
    assert [g["labels"]["replica"] for g in groups] == ["a-0", "b-0", "b-1"]
    decoded = json.loads(json.dumps(groups))
    for group in decoded:  # Prometheus: targets a list of strings, labels a string -> string map
        assert all(isinstance(t, str) for t in group["targets"])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in group["labels"].items())


def test_scheme_path_prefix_default_port_and_ipv6() -> None:
    body = status(
        {
            "name": "chat",
            "runtime": "vllm",
            "replicas": [
                replica("chat-0", url="https://worker.example:8443/prefix/"),
                replica("chat-1", url="http://worker.example"),
                replica("chat-2", url="http://[::1]:8000"),
            ],
        }
    )
    groups = {g["labels"]["replica"]: g for g in prometheus_targets(body, metrics_path="/metrics")}
    assert groups["chat-0"]["targets"] == ["worker.example:8443"]
    assert groups["chat-0"]["labels"]["__scheme__"] == "https"
    assert groups["chat-0"]["labels"]["__metrics_path__"] == "/prefix/metrics"
    assert groups["chat-1"]["targets"] == ["worker.example:80"]
    assert groups["chat-2"]["targets"] == ["[::1]:8000"]


def test_revision_label_when_the_status_carries_one() -> None:
    body = status({"name": "chat", "runtime": "vllm", "replicas": [replica("chat-0", revision="chat-00002")]})
    assert prometheus_targets(body)[0]["labels"]["revision"] == "chat-00002"
    plain = status({"name": "chat", "runtime": "vllm", "replicas": [replica("chat-0")]})
    assert "revision" not in prometheus_targets(plain)[0]["labels"]


def test_a_url_that_is_not_http_is_a_clear_error() -> None:
    body = status({"name": "chat", "runtime": "vllm", "replicas": [replica("chat-0", url="unix:///tmp/sock")]})
    with pytest.raises(ValueError, match="chat-0: not an http"):
        prometheus_targets(body)


async def test_from_a_real_controller_status() -> None:
    """The shape the controller reports today (Controller.status()) is the one the function reads."""
    backend, registry = FakeBackend(), EndpointRegistry()
    service = parse_services(
        "apiVersion: serving.llmserve.io/v1alpha1\nkind: InferenceService\nmetadata: {name: chat}\n"
        "spec: {predictor: {minReplicas: 2, maxReplicas: 2, "
        "model: {modelFormat: {name: huggingface}, storageUri: file:///models/chat}}}\n"
    )[0]
    controller = Controller(
        backend,
        registry,
        FAST,
        pull=lambda svc: Path("/models") / svc.name,
        plan=lambda svc, path: WorkerPlan(argv=("serve", str(path))),
        health=backend.health,
    )
    await controller.start()
    try:
        controller.apply([service])
        await until(lambda: len(registry.ready_endpoints("chat")) == 2)
        groups = prometheus_targets({"services": controller.status()})
    finally:
        await controller.stop()
    assert sorted(g["labels"]["replica"] for g in groups) == ["chat-00001-0", "chat-00001-1"]
    assert {g["labels"]["runtime"] for g in groups} == {"vllm"}
    assert all(g["targets"][0].startswith("fake-") for g in groups)
