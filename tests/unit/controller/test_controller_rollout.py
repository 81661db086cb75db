"""The controller's rollout over a fake backend: the canary split published with the service and the endpoints of
every revision in it, promotion and rollback, a revision that cannot start, per-revision scaling, persistence
across a restart, and a service's transformer replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.autoscaling.autoscaler import Autoscaler
from controller.statedir import StateDir
from llmserve.endpoints import Demand
from llmserve.spec import InferenceService, parse_services
from llmserve.traffic import TrafficTarget
from tests.support.waiting import until
from tests.unit.controller.test_controller import Harness

V1, V2 = "chat-00001", "chat-00002"


def service(version: str = "v1", percent: int | None = None, extra: str = "", replicas: str = "") -> InferenceService:
    canary = f"    canaryTrafficPercent: {percent}\n" if percent is not None else ""
    (parsed,) = parse_services(
        f"""
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  predictor:
{canary}{replicas}    model: {{modelFormat: {{name: huggingface}}, storageUri: file:///models/chat-{version}}}
{extra}"""
    )
    return parsed


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    await h.controller.start()
    yield h
    await h.controller.stop()
    assert h.backend.live() == []


def traffic(h: Harness) -> tuple[TrafficTarget, ...]:
    info = h.registry.resolve_model("chat")
    return info.traffic if info is not None else ()


def revisions_published(h: Harness) -> set[str]:
    return {e.revision for e in h.registry.ready_endpoints("chat")}


async def test_a_canary_gets_its_share_and_both_revisions_are_published(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: revisions_published(harness) == {V1})
    assert traffic(harness) == (TrafficTarget(V1, 100, "latest"),)
    harness.controller.apply([service("v2", 20)])
    await until(lambda: revisions_published(harness) == {V1, V2})
    assert traffic(harness) == (TrafficTarget(V2, 20, "latest"), TrafficTarget(V1, 80, "prev"))
    info = harness.registry.resolve_model("chat")
    assert info is not None
    assert info.revision == V1  # the one serving most of the traffic
    # Promotion: 100 % to v2; v1 loses its traffic and its replica stops (retirement after 0 s here).
    assert harness.controller.apply([service("v2", 100)]) == ["chat: changed in place (revision chat-00002)"]
    await until(lambda: traffic(harness) == (TrafficTarget(V2, 100, "latest"),))
    await until(lambda: len(harness.backend.live()) == 1)
    assert revisions_published(harness) == {V2}
    status = harness.controller.status()[0]
    predictor = status["components"]["predictor"]
    assert (predictor["latestRolledoutRevision"], predictor["previousRolledoutRevision"]) == (V2, V1)
    # Rollback: everything back to v1, whose replica starts again.
    harness.controller.apply([service("v2", 0)])
    await until(lambda: traffic(harness) == (TrafficTarget(V2, 0, "latest"), TrafficTarget(V1, 100, "prev")))
    await until(lambda: revisions_published(harness) == {V1, V2})
    assert [r["state"] for r in harness.controller.status()[0]["revisions"]] == ["ready", "ready"]


async def test_a_revision_that_cannot_start_fails_and_gets_nothing(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: revisions_published(harness) == {V1})
    harness.backend.start_healthy = False
    harness.controller.apply([service("v2", 50)])
    for _ in range(2):  # two failed starts (FAST: revision_failure_restarts is 2)
        await until(lambda: any(p.running() and not p.healthy for p in harness.backend.live()))
        next(p for p in harness.backend.live() if not p.healthy).crash(1)
        await until(lambda: not any(p.running() and not p.healthy for p in harness.backend.live()), within_s=2)
    await until(lambda: harness.controller.status()[0]["revisions"][-1]["state"] == "failed")
    status = harness.controller.status()[0]
    assert status["revisions"][-1]["failure"].startswith("replica chat-00002-0 exited with status 1 while starting")
    assert status["reason"].startswith("revision chat-00002 failed")
    assert traffic(harness) == (TrafficTarget(V1, 50, "latest"), TrafficTarget(V1, 50, "prev"))
    await until(lambda: len(harness.backend.live()) == 1)  # its replica is stopped
    assert revisions_published(harness) == {V1}


async def test_a_first_revision_keeps_trying(harness: Harness) -> None:
    harness.backend.start_healthy = False
    harness.controller.apply([service()])
    for _ in range(3):
        await until(lambda: any(p.running() for p in harness.backend.live()))
        harness.backend.live()[0].crash(1)
    harness.backend.start_healthy = True
    await until(lambda: revisions_published(harness) == {V1})
    assert harness.controller.status()[0]["revisions"][0]["state"] == "ready"


async def test_a_new_revision_starts_with_what_serves_and_then_scales_on_its_own_demand() -> None:
    harness = Harness()

    class Split:
        def __init__(self) -> None:
            self.by_revision: dict[str, Demand] = {}

        def demand(self, service: str) -> Demand:
            return Demand()

        def revision_demand(self, service: str, revision: str) -> Demand:
            return self.by_revision.get(revision, Demand())

    demand = Split()
    now = [0.0]
    autoscaler = Autoscaler(harness.controller, demand, clock=lambda: now[0])
    await harness.controller.start()
    try:
        scaled = "    minReplicas: 1\n    maxReplicas: 4\n    scaleTarget: 2\n"
        harness.controller.apply([service(replicas=scaled)])
        await until(lambda: revisions_published(harness) == {V1})
        harness.controller.set_desired("chat", 3)
        await until(lambda: harness.controller.ready_count("chat", V1) == 3)
        harness.controller.apply([service("v2", 25, replicas=scaled)])
        assert harness.controller.desired("chat", V2) == 3  # as many as serve now
        await until(lambda: revisions_published(harness) == {V1, V2})
        demand.by_revision = {V1: Demand(in_flight=6, arrived=6), V2: Demand(in_flight=1, arrived=1)}
        for _ in range(3):
            now[0] += 1
            autoscaler.tick()
        assert (harness.controller.desired("chat", V1), harness.controller.desired("chat", V2)) == (3, 1)
        decisions = autoscaler.revision_decisions()
        assert set(decisions) == {("chat", V1), ("chat", V2)}
    finally:
        await harness.controller.stop()


async def test_the_rollout_survives_a_controller_restart(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    first = Harness(state_dir=state)
    await first.controller.start()
    first.controller.apply([service()])
    await until(lambda: revisions_published(first) == {V1})
    first.controller.apply([service("v2", 30)])
    await until(lambda: revisions_published(first) == {V1, V2})
    await first.controller.stop(keep_workers=True)
    second = Harness(state_dir=state, backend=first.backend)
    await second.controller.start()
    try:
        assert traffic(second) == (TrafficTarget(V2, 30, "latest"), TrafficTarget(V1, 70, "prev"))
        assert revisions_published(second) == {V1, V2}  # both adopted, published before gateways come asking
        assert len(first.backend.launched) == 2
        second.controller.apply([service("v3", 30)])
        assert second.controller.status()[0]["latest_revision"] == "chat-00003"  # generations carry on
    finally:
        await second.controller.stop()


TRANSFORMER = """  transformer:
    handler: tests/support/transformers.py:Marker
    timeoutSeconds: 3
"""


async def test_transformer_replicas_are_supervised_and_published_as_the_transformer(harness: Harness) -> None:
    harness.controller.apply([service(extra=TRANSFORMER)])

    def components() -> list[tuple[str, str]]:
        return sorted((e.component, e.replica_id) for e in harness.registry.ready_endpoints("chat"))

    await until(lambda: components() == [("predictor", "chat-00001-0"), ("transformer", "chat-transformer-0")])
    info = harness.registry.resolve_model("chat")
    assert info is not None
    assert info.transformer_timeout_s == 3
    (process,) = [p for p in harness.backend.live() if "llmserve.runtimes.transformer" in p.plan.argv]
    assert process.plan.argv[process.plan.argv.index("--timeout-s") + 1] == "3"
    process.crash(137)
    await until(lambda: ("transformer", "chat-transformer-0") not in components(), within_s=1)
    await until(lambda: ("transformer", "chat-transformer-0") in components())
    status = harness.controller.status()[0]["transformer"]
    assert (status["ready_replicas"], status["replicas"][0]["restarts"]) == (1, 1)
    assert harness.controller.suspect("chat", "chat-transformer-0")
    harness.controller.apply([service()])  # the transformer removed: its replica stops
    await until(lambda: components() == [("predictor", "chat-00001-0")])
    assert harness.registry.resolve_model("chat").transformer_timeout_s is None  # type: ignore[union-attr]
