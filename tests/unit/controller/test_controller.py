"""Controller and replica supervision over a fake backend (no processes, no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controller.reconciler import Controller
from controller.settings import ControllerSettings
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
)


def service(text: str = SPEC) -> InferenceService:
    return parse_services(text)[0]


class Harness:
    def __init__(self, pull: Callable[[InferenceService], Path] | None = None) -> None:
        self.backend = FakeBackend()
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
