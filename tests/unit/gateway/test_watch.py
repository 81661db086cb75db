"""A gateway's copy of the fleet, from the controller's watch events (the wire format of
llmserve/protocol/control.py)."""

from __future__ import annotations

from gateway.watch import WatchedEndpoints
from llmserve.control import ControlClient
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.control import (
    endpoints_event,
    graph_deleted_event,
    graph_event,
    service_deleted_event,
    service_event,
    snapshot_event,
)
from llmserve.spec import InferenceGraph

CHAT = ServiceInfo(name="chat", model_name="smollm2", created=1, routing_profile="token-aware")
E0 = Endpoint("chat", "chat-00001-0", "http://127.0.0.1:1", revision="chat-00001")


def watched() -> tuple[WatchedEndpoints, list[str]]:
    endpoints = WatchedEndpoints(ControlClient("http://127.0.0.1:9", None), "gw")
    changed: list[str] = []
    endpoints.subscribe(changed.append)
    return endpoints, changed


def test_a_snapshot_then_changes() -> None:
    endpoints, changed = watched()
    endpoints.apply(snapshot_event("e.3", [CHAT], {"chat": (E0,)}))
    assert endpoints.synced.is_set()
    assert endpoints.resolve_model("smollm2") == CHAT
    assert endpoints.ready_endpoints("chat") == (E0,)
    assert endpoints.resource_version == "e.3"
    renamed = ServiceInfo(name="chat", model_name="smol", created=1)
    endpoints.apply(service_event("e.4", renamed))
    assert endpoints.resolve_model("smollm2") is None
    assert endpoints.resolve_model("smol") == renamed
    endpoints.apply(endpoints_event("e.5", "chat", ()))
    assert endpoints.ready_endpoints("chat") == ()
    endpoints.apply(service_deleted_event("e.6", "chat"))
    assert endpoints.services() == []
    assert endpoints.resource_version == "e.6"
    assert changed == ["chat"] * 4


def test_a_fresh_snapshot_replaces_everything_and_tells_what_changed() -> None:
    endpoints, changed = watched()
    other = ServiceInfo(name="other", model_name="other", created=1)
    endpoints.apply(snapshot_event("e.1", [CHAT, other], {"chat": (E0,)}))
    changed.clear()
    endpoints.apply(snapshot_event("f.1", [CHAT], {"chat": (E0,)}))  # a restarted controller: same chat, no other
    assert [s.name for s in endpoints.services()] == ["chat"]
    assert changed == ["other"]


def test_fields_a_newer_controller_adds_are_ignored() -> None:
    endpoints, _ = watched()
    event = snapshot_event("e.1", [CHAT], {"chat": (E0,)})
    event["services"][0]["from_the_future"] = 1
    event["endpoints"]["chat"][0]["also_new"] = "x"
    endpoints.apply(event)
    assert endpoints.ready_endpoints("chat") == (E0,)


def a_graph(name: str, service: str = "chat", **spec: object) -> InferenceGraph:
    return InferenceGraph.model_validate(
        {
            "apiVersion": "serving.llmserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": name},
            "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceName": service}]}}, **spec},
        }
    )


def test_graphs_come_with_the_snapshot_and_follow_their_events() -> None:
    endpoints, _ = watched()
    graphs: list[str] = []
    endpoints.subscribe_graphs(graphs.append)
    rag = a_graph("rag")
    endpoints.apply(snapshot_event("e.1", [CHAT], {"chat": (E0,)}, [rag]))
    assert endpoints.graphs() == {"rag": rag}
    slower = a_graph("rag", timeout=30)
    endpoints.apply(graph_event("e.2", slower))
    assert endpoints.graphs()["rag"].spec.timeout == 30
    endpoints.apply(graph_event("e.3", a_graph("other")))
    endpoints.apply(graph_deleted_event("e.4", "rag"))
    assert list(endpoints.graphs()) == ["other"]
    endpoints.apply(snapshot_event("f.1", [CHAT], {}, [a_graph("other")]))  # a restarted controller: unchanged
    assert graphs == ["rag", "rag", "other", "rag"]
    endpoints.apply(snapshot_event("g.1", [CHAT], {}))  # a controller with no graphs
    assert endpoints.graphs() == {}
    assert graphs[-1] == "other"


def test_a_graph_this_gateway_cannot_run_is_left_out() -> None:
    endpoints, _ = watched()
    endpoints.apply(snapshot_event("e.1", [CHAT], {}, [a_graph("rag")]))
    newer = graph_event("e.2", a_graph("rag"))
    newer["graph"]["spec"]["nodes"]["root"]["routerType"] = "Loop"  # a router type from the future
    endpoints.apply(newer)
    assert endpoints.graphs() == {}  # not the stale version either: the controller no longer has it
    assert endpoints.resource_version == "e.2"
    endpoints.apply({"type": "SOMETHING_NEW", "resourceVersion": "e.3"})  # unknown events are skipped
    assert endpoints.resource_version == "e.3"
