"""Controller and replica supervision over a fake backend (no processes, no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controller.reconciler import Controller
from controller.settings import ControllerSettings
from controller.statedir import StateDir
from llmserve.endpoints import EndpointRegistry
from llmserve.spec import InferenceService, parse_services
from llmserve.workers import WorkerPlan
from tests.support.fake_backend import FakeBackend
from tests.support.waiting import until

SPEC = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 3
    model: {modelFormat: {name: huggingface}, storageUri: file:///models/chat}
"""

FAST = ControllerSettings(
    startup_poll_s=0.01,
    health_interval_s=0.02,
    health_failures_to_restart=2,
    backoff_initial_s=0.01,
    backoff_max_s=0.04,
    backoff_reset_after_s=100,
    stop_grace_s=0.1,
    pull_retry_s=0.05,
    drain_s=0,
    revision_retire_after_s=0,
)


def service(text: str = SPEC) -> InferenceService:
    return parse_services(text)[0]


class Harness:
    def __init__(
        self,
        pull: Callable[[InferenceService], Path] | None = None,
        *,
        state_dir: StateDir | None = None,
        backend: FakeBackend | None = None,
    ) -> None:
        self.backend = backend or FakeBackend()
        self.registry = EndpointRegistry()
        self.pulls: list[str] = []

        def default_pull(svc: InferenceService) -> Path:
            self.pulls.append(svc.name)
            return Path("/models") / svc.name

        self.controller = Controller(
            self.backend,
            self.registry,
            FAST,
            pull=pull or default_pull,
            plan=lambda svc, path: WorkerPlan(argv=("serve", str(path))),
            health=self.backend.health,
            state_dir=state_dir,
        )

    def ready(self, name: str = "chat") -> int:
        return len(self.registry.ready_endpoints(name))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    await h.controller.start()
    yield h
    await h.controller.stop()
    assert h.backend.live() == []  # nothing left running


async def test_declared_service_is_listed_before_it_is_ready(harness: Harness) -> None:
    harness.controller.apply([service()])
    info = harness.registry.resolve_model("chat")
    assert info is not None
    assert info.min_replicas == 1
    await until(lambda: harness.ready() == 1)
    assert harness.pulls == ["chat"]
    assert harness.backend.launched[0].plan.argv == ("serve", "/models/chat")


async def test_crash_unpublishes_at_once_and_restarts(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    first = harness.backend.launched[0]
    first.crash(137)
    await until(lambda: harness.ready() == 0, within_s=1)
    await until(lambda: harness.ready() == 1)
    (replica,) = harness.controller.replicas("chat")
    assert replica.record.restarts == 1
    assert replica.record.last_exit == "exited with status 137"
    assert len(harness.backend.launched) == 2
    assert harness.registry.ready_endpoints("chat")[0].url == harness.backend.launched[1].url


async def test_failing_health_checks_restart_the_replica(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    harness.backend.launched[0].healthy = False
    await until(lambda: len(harness.backend.launched) == 2)
    assert not harness.backend.launched[0].running()  # the hung process was stopped, not left behind
    assert harness.controller.replicas("chat")[0].record.last_exit == "failed 2 health checks in a row"


async def test_startup_failures_back_off_and_retry(harness: Harness) -> None:
    harness.backend.start_healthy = False
    harness.controller.apply([service()])
    await until(lambda: len(harness.backend.launched) == 1)
    harness.backend.launched[0].crash(1)
    await until(lambda: len(harness.backend.launched) == 2)
    (replica,) = harness.controller.replicas("chat")
    assert replica.record.last_exit == "exited with status 1 while starting"
    harness.backend.start_healthy = True
    harness.backend.launched[1].healthy = True
    await until(lambda: harness.ready() == 1)


async def test_launch_errors_are_retried(harness: Harness) -> None:
    harness.backend.fail_launch = True
    harness.controller.apply([service()])
    await until(lambda: any(r.record.restarts >= 2 for r in harness.controller.replicas("chat")))
    assert "launch failed" in (harness.controller.replicas("chat")[0].record.last_exit or "")
    harness.backend.fail_launch = False
    await until(lambda: harness.ready() == 1)


async def test_scaling_is_clamped_and_scale_down_stops_processes(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    assert harness.controller.set_desired("chat", 10) == 3
    await until(lambda: harness.ready() == 3)
    assert harness.controller.set_desired("chat", 0) == 1
    await until(lambda: len(harness.backend.live()) == 1)
    assert harness.ready() == 1
    status = harness.controller.status()[0]
    assert (status["desired_replicas"], status["ready_replicas"], status["max_replicas"]) == (1, 1, 3)


async def test_removing_a_service_withdraws_it(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    assert harness.controller.delete("chat")
    assert harness.registry.resolve_model("chat") is None
    await until(lambda: harness.backend.live() == [])


async def test_min_replicas_zero_starts_nothing(harness: Harness) -> None:
    harness.controller.apply([service(SPEC.replace("minReplicas: 1", "minReplicas: 0"))])
    await until(lambda: harness.controller.status()[0]["model_dir"] is not None)
    await harness.controller.reconcile()
    assert harness.backend.launched == []


async def test_failed_pull_is_reported_and_retried() -> None:
    attempts: list[int] = []

    def flaky_pull(svc: InferenceService) -> Path:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("registry unreachable")
        return Path("/models/ok")

    h = Harness(pull=flaky_pull)
    await h.controller.start()
    try:
        h.controller.apply([service()])
        await until(lambda: h.controller.status()[0]["pull_error"] == "registry unreachable")
        await until(lambda: h.ready() == 1)
        assert h.controller.status()[0]["pull_error"] is None
        assert len(attempts) == 2
    finally:
        await h.controller.stop()


CHANGED = SPEC.replace("storageUri: file:///models/chat}", "storageUri: file:///models/chat, args: [--v2]}")


async def test_a_changed_predictor_rolls_out_only_once_the_new_revision_is_ready(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    (old,) = harness.backend.live()
    harness.backend.start_healthy = False  # the new revision's replica will not be ready yet
    assert harness.controller.apply([service(CHANGED)]) == [
        "chat: changed (new revision chat-00002; the current one serves until it is ready)"
    ]
    await until(lambda: len(harness.backend.launched) == 2)
    new = harness.backend.launched[1]
    assert new.plan.argv == ("serve", "/models/chat")
    await harness.controller.reconcile()
    assert [e.url for e in harness.registry.ready_endpoints("chat")] == [old.url]  # still the old one
    status = harness.controller.status()[0]
    assert (status["serving_revision"], status["latest_revision"]) == ("chat-00001", "chat-00002")
    new.healthy = True
    await until(lambda: [e.url for e in harness.registry.ready_endpoints("chat")] == [new.url])
    await until(lambda: not old.running())  # drained and stopped once it had no traffic
    revisions = harness.controller.status()[0]["revisions"]  # the old one is remembered (a rollback by name)
    assert [(r["name"], r["state"], r["traffic_percent"], r["replicas"]) for r in revisions] == [
        ("chat-00001", "retired", 0, 0),
        ("chat-00002", "ready", 100, 1),
    ]


async def test_a_change_that_keeps_the_template_applies_in_place(harness: Harness) -> None:
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    outcome = harness.controller.apply([service(SPEC.replace("maxReplicas: 3", "maxReplicas: 5"))])
    assert outcome == ["chat: changed in place (revision chat-00001)"]
    assert len(harness.backend.launched) == 1
    assert harness.controller.status()[0]["max_replicas"] == 5


async def test_a_suspect_replica_is_checked_at_once_and_replaced_if_unhealthy(harness: Harness) -> None:
    slow = FAST.model_copy(update={"health_interval_s": 60.0})  # no periodic check would come in time
    harness.controller.settings = slow
    harness.controller.apply([service()])
    await until(lambda: harness.ready() == 1)
    (replica,) = harness.controller.replicas("chat")
    replica._settings = slow
    harness.backend.launched[0].healthy = False
    assert harness.controller.suspect("chat", replica.replica_id)
    await until(lambda: len(harness.backend.launched) == 2)
    assert replica.record.last_exit == "a gateway could not use it and its health check failed"
    assert not harness.controller.suspect("chat", "nope")


async def test_a_new_controller_adopts_what_the_old_one_left_running(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    first = Harness(state_dir=state)
    await first.controller.start()
    first.controller.apply([service()])
    await until(lambda: first.ready() == 1)
    (process,) = first.backend.live()
    await first.controller.stop(keep_workers=True)
    assert process.running()
    assert first.backend.released
    second = Harness(state_dir=state, backend=first.backend)  # the same machine
    await second.controller.start()  # restores the service from the state dir, no apply needed
    try:
        assert second.ready() == 1
        assert second.registry.ready_endpoints("chat")[0].url == process.url
        assert first.backend.adopted == [process]
        assert len(first.backend.launched) == 1  # nothing started again
        assert second.controller.status()[0]["replicas"][0]["adopted"]
    finally:
        await second.controller.stop()
    assert not process.running()
    assert state.replicas() == []
