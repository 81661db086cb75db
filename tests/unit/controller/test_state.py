"""The published state: versions, resumable changes, and watchers that fall behind."""

from __future__ import annotations

from controller.state import ControlState
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.spec import InferenceGraph

INFO = ServiceInfo(name="chat", model_name="chat", created=1)
E0 = Endpoint("chat", "chat-00001-0", "http://127.0.0.1:1", revision="chat-00001")
E1 = Endpoint("chat", "chat-00001-1", "http://127.0.0.1:2", revision="chat-00001")


def test_every_change_gets_the_next_version_and_no_change_none() -> None:
    state = ControlState(epoch="e")
    assert state.resource_version == "e.0"
    state.declare_service(INFO)
    state.declare_service(INFO)  # the same again: not a change
    state.publish(E0)
    state.publish(E0)
    assert state.resource_version == "e.2"
    assert state.ready_endpoints("chat") == (E0,)
    state.unpublish("chat", "chat-00001-9")  # unknown: not a change
    assert state.resource_version == "e.2"


def test_a_watch_resumes_with_just_what_it_missed() -> None:
    state = ControlState(epoch="e")
    state.declare_service(INFO)
    seen = state.resource_version
    state.publish(E0)
    state.publish(E1)
    changes = state.changes_since(seen)
    assert changes is not None
    assert [c["type"] for c in changes] == ["ENDPOINTS", "ENDPOINTS"]
    assert [e["replica_id"] for e in changes[-1]["endpoints"]] == ["chat-00001-0", "chat-00001-1"]
    assert state.changes_since(state.resource_version) == []


def test_a_version_it_cannot_resume_from_means_a_snapshot() -> None:
    state = ControlState(epoch="e", history=2)
    for i in range(5):
        state.declare_service(ServiceInfo(name=f"s{i}", model_name=f"s{i}", created=1))
    assert state.changes_since("e.1") is None  # older than the history kept
    assert state.changes_since("other.3") is None  # a previous controller's version
    assert state.changes_since("e.99") is None  # from the future
    assert state.changes_since("garbage") is None
    snapshot = state.snapshot()
    assert snapshot["type"] == "SNAPSHOT"
    assert snapshot["resourceVersion"] == "e.5"
    assert len(snapshot["services"]) == 5


def test_a_watcher_that_falls_behind_starts_over() -> None:
    state = ControlState(epoch="e", watcher_queue=2)
    watcher = state.watch()
    state.declare_service(INFO)
    state.publish(E0)
    assert not watcher.behind
    state.publish(E1)  # the third change does not fit
    assert watcher.behind
    watcher.restart()
    assert not watcher.behind
    assert watcher.queue.empty()
    state.unwatch(watcher)
    assert state.watchers() == 0


def test_withdrawing_a_service_drops_its_endpoints() -> None:
    state = ControlState(epoch="e")
    state.declare_service(INFO)
    state.set_endpoints("chat", (E0, E1))
    state.withdraw_service("chat")
    assert state.services() == []
    assert state.ready_endpoints("chat") == ()
    state.set_endpoints("chat", (E0,))  # for a service that is gone: ignored
    assert state.ready_endpoints("chat") == ()


def graph(name: str = "rag", service: str = "chat", **spec: object) -> InferenceGraph:
    return InferenceGraph.model_validate(
        {
            "apiVersion": "serving.llmserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": name},
            "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceName": service}]}}, **spec},
        }
    )


def test_graphs_are_versioned_published_and_in_the_snapshot() -> None:
    state = ControlState(epoch="e")
    state.declare_service(INFO)
    seen = state.resource_version
    state.declare_graph(graph())
    state.declare_graph(graph())  # the same again: not a change
    changed = graph(timeout=30)
    state.declare_graph(changed)
    state.withdraw_graph("rag")
    state.withdraw_graph("rag")  # gone already: not a change
    changes = state.changes_since(seen)
    assert changes is not None
    assert [c["type"] for c in changes] == ["GRAPH", "GRAPH", "GRAPH_DELETED"]
    assert InferenceGraph.model_validate(changes[1]["graph"]) == changed  # as applied, validated again
    assert changes[2]["name"] == "rag"
    state.declare_graph(graph("other"))
    snapshot = state.snapshot()
    assert [g["metadata"]["name"] for g in snapshot["graphs"]] == ["other"]
    assert snapshot["graphs"][0]["spec"]["nodes"]["root"]["steps"][0]["serviceName"] == "chat"
