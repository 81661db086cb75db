"""A replica the controller stops is drained first (controller/replica.py `Replica.stop`): withdrawn at once, its
requests in flight finish (watched with the busy probe, or left to the worker's own drain on SIGTERM), then it is
stopped. Over the fake backend: no processes, no HTTP."""

from __future__ import annotations

import asyncio

from controller.replica import Replica, ReplicaState
from controller.settings import ControllerSettings
from llmserve.endpoints import EndpointRegistry, ServiceInfo
from llmserve.workers import WorkerPlan
from tests.support.fake_backend import FakeBackend
from tests.support.waiting import until

SETTINGS = ControllerSettings(startup_poll_s=0.01, health_interval_s=0.02, stop_grace_s=0.1)


class Busy:
    """The busy probe's answer, set by the test (None: the worker cannot tell)."""

    def __init__(self, value: float | None) -> None:
        self.value = value
        self.asked = 0

    async def __call__(self, url: str) -> float | None:
        self.asked += 1
        return self.value


async def ready_replica(busy: Busy) -> tuple[Replica, FakeBackend, EndpointRegistry]:
    backend, registry = FakeBackend(), EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    replica = Replica("chat-1", "chat", WorkerPlan(argv=("serve",)), backend, registry, SETTINGS, backend.health,
                      busy=busy)  # fmt: skip
    replica.start()
    await until(lambda: replica.ready)
    return replica, backend, registry


async def test_a_busy_replica_is_withdrawn_at_once_and_stopped_when_its_requests_are_done() -> None:
    busy = Busy(2)
    replica, backend, registry = await ready_replica(busy)
    process = backend.launched[0]
    stopping = asyncio.ensure_future(replica.stop(drain_s=30))
    await until(lambda: busy.asked >= 2)
    assert registry.ready_endpoints("chat") == ()  # gateways send it nothing new
    assert replica.record.state is ReplicaState.STOPPING
    assert process.running()  # its requests go on
    busy.value = 0
    await stopping
    assert not process.running()
    assert process.stopped_with_grace == SETTINGS.stop_grace_s  # idle: SIGTERM with the usual grace


async def test_a_replica_that_cannot_tell_drains_itself_on_sigterm() -> None:
    """No busy probe answer (a V2 runtime): SIGTERM at once, with the drain's time before SIGKILL."""
    replica, backend, _ = await ready_replica(Busy(None))
    await replica.stop(drain_s=30)
    grace = backend.launched[0].stopped_with_grace
    assert grace is not None
    assert 29 < grace <= 30


async def test_a_drain_ends_at_its_deadline() -> None:
    busy = Busy(5)  # never idle
    replica, backend, _ = await ready_replica(busy)
    await replica.stop(drain_s=0.3)
    assert not backend.launched[0].running()
    assert busy.asked >= 1


async def test_no_drain_stops_at_once() -> None:
    busy = Busy(5)
    replica, backend, _ = await ready_replica(busy)
    await replica.stop(drain_s=0)
    assert busy.asked == 0
    assert backend.launched[0].stopped_with_grace == SETTINGS.stop_grace_s
