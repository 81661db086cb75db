"""InferenceGraphs on the controller: checked against the running services, published, refused deletions of the
services they call, saved and restored (fake backend, the real published state)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.graphs import ServiceInUse
from controller.reconciler import GATEWAY_KEY_ENV, GATEWAY_URL_ENV, Controller
from controller.settings import ControllerSettings
from controller.state import ControlState
from controller.statedir import StateDir
from llmserve.spec import SpecError, parse_resources
from llmserve.workers import WorkerPlan
from tests.support.fake_backend import FakeBackend
from tests.support.waiting import until
from tests.unit.controller.test_controller import FAST

SERVICES = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  predictor:
    model: {modelFormat: {name: huggingface}, storageUri: file:///models/chat}
---
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: docs}
spec:
  predictor:
    model: {modelFormat: {name: huggingface}, storageUri: file:///models/docs}
"""
GRAPH = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: rag}
spec:
  exposeAs: {model: EXPOSED}
  nodes:
    root:
      routerType: Sequence
      steps:
        - {serviceName: docs}
        - {serviceName: chat, data: $response, stream: true}
"""


def graph_file(exposed: str = "rag") -> str:
    return GRAPH.replace("EXPOSED", exposed)


class Plane:
    def __init__(self, state_dir: StateDir | None = None, settings: ControllerSettings = FAST) -> None:
        self.backend = FakeBackend()
        self.state = ControlState(epoch="e")
        self.plans: list[WorkerPlan] = []

        def plan(_: object, path: Path) -> WorkerPlan:
            return WorkerPlan(argv=("serve", str(path)), env={"FROM_SPEC": "1"})

        self.controller = Controller(
            self.backend,
            self.state,
            settings,
            pull=lambda svc: Path("/models") / svc.name,
            plan=plan,
            health=self.backend.health,
            state_dir=state_dir,
            graphs=self.state,
        )

    def apply(self, text: str) -> list[str]:
        declared = parse_resources(text, "f.yaml", known_services=[s.name for s in self.controller.services()])
        return self.controller.apply(declared.services, declared.graphs, source="f.yaml")


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    p = Plane()
    await p.controller.start()
    yield p
    await p.controller.stop()


async def test_a_graph_applied_with_its_services_is_published(plane: Plane) -> None:
    assert plane.apply(SERVICES + "---" + graph_file()) == [
        "chat: created (revision chat-00001)",
        "docs: created (revision docs-00001)",
        "graph/rag: created",
    ]
    (published,) = plane.state.graphs()
    assert published.name == "rag"
    assert plane.apply(graph_file()) == ["graph/rag: unchanged"]
    assert plane.apply(graph_file("rag-v2")) == ["graph/rag: changed"]  # its old exposed name is free again
    (status,) = plane.controller.graph_status()
    assert status["exposed_as"] == "rag-v2"
    assert [s["name"] for s in status["services"]] == ["docs", "chat"]


async def test_a_graph_over_services_that_do_not_run_here_is_refused(plane: Plane) -> None:
    plane.apply(SERVICES)
    lonely = graph_file().replace("serviceName: docs", "serviceName: search")
    with pytest.raises(SpecError) as refused:
        plane.apply(lonely)
    assert (
        "spec.nodes.root.steps.0.serviceName: no InferenceService named 'search' in this file (declared: chat, docs)"
        in str(refused.value)
    )
    graphs = parse_resources(lonely, "f.yaml", known_services=["chat", "docs", "search"]).graphs
    with pytest.raises(SpecError, match="no InferenceService named 'search' on the controller"):
        plane.controller.apply([], graphs, source="f.yaml")  # the controller's own check
    assert plane.state.graphs() == []


async def test_model_names_stay_unique_across_services_and_graphs(plane: Plane) -> None:
    plane.apply(SERVICES + "---" + graph_file())
    with pytest.raises(SpecError, match=r"spec\.exposeAs\.model: 'chat' is already served"):
        plane.apply(graph_file("chat").replace("name: rag", "name: rag2"))
    takes_the_name = SERVICES.split("---")[0].replace(
        "file:///models/chat}", "file:///models/chat, servedModelName: rag}"
    )
    with pytest.raises(SpecError, match="'rag' is the model name InferenceGraph 'rag' is exposed as"):
        plane.apply(takes_the_name)
    unchanged = plane.controller.service("chat")
    assert unchanged is not None
    assert unchanged.served_model_name == "chat"
    # Applied together with the graph that frees the name, it fits.
    assert "graph/rag: changed" in plane.apply(takes_the_name + "---" + graph_file("answers"))


async def test_a_service_a_graph_calls_cannot_be_deleted(plane: Plane) -> None:
    plane.apply(SERVICES + "---" + graph_file())
    with pytest.raises(ServiceInUse) as refused:
        plane.controller.delete("chat")
    assert str(refused.value) == (
        "The service 'chat' is called by InferenceGraph 'rag' (spec.nodes.root.steps.1.serviceName): delete the "
        "graph first (llmserve delete graph/rag) or apply it without that step."
    )
    assert plane.controller.has_service("chat")
    assert plane.controller.delete_graph("rag")
    assert not plane.controller.delete_graph("rag")
    assert plane.state.graphs() == []
    assert plane.controller.delete("chat")


async def test_graphs_survive_a_controller_restart(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    first = Plane(state_dir)
    await first.controller.start()
    first.apply(SERVICES + "---" + graph_file())
    await first.controller.stop()
    saved = json.loads((tmp_path / "state" / "graphs.json").read_text())
    assert [g["metadata"]["name"] for g in saved["graphs"]] == ["rag"]
    second = Plane(state_dir)
    await second.controller.start()
    try:
        assert [g.name for g in second.state.graphs()] == ["rag"]  # published before gateways ask
        with pytest.raises(ServiceInUse):
            second.controller.delete("docs")
    finally:
        await second.controller.stop()


async def test_a_saved_graph_that_no_longer_fits_is_dropped(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    first = Plane(state_dir)
    await first.controller.start()
    first.apply(SERVICES + "---" + graph_file())
    await first.controller.stop()
    services = json.loads((tmp_path / "state" / "services.json").read_text())
    services["services"] = [s for s in services["services"] if s["spec"]["metadata"]["name"] != "docs"]
    (tmp_path / "state" / "services.json").write_text(json.dumps(services))  # as if a write were lost
    second = Plane(state_dir)
    await second.controller.start()
    try:
        assert second.state.graphs() == []
        assert second.controller.has_service("chat")
    finally:
        await second.controller.stop()


async def test_replicas_are_told_where_the_gateway_is() -> None:
    from pydantic import SecretStr

    settings = FAST.model_copy(update={"gateway_url": "http://127.0.0.1:9999", "gateway_api_key": SecretStr("k")})
    plane = Plane(settings=settings)
    await plane.controller.start()
    try:
        plane.apply(SERVICES)
        await until(lambda: len(plane.backend.launched) == 2)
        env = plane.backend.launched[0].plan.env
        assert env == {GATEWAY_URL_ENV: "http://127.0.0.1:9999", GATEWAY_KEY_ENV: "k", "FROM_SPEC": "1"}
    finally:
        await plane.controller.stop()
