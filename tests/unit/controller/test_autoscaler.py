"""The autoscaling loop between a fake gateway demand and the controller over a fake backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controller.autoscaling.autoscaler import Autoscaler
from llmserve.endpoints import Demand
from llmserve.spec import InferenceService, parse_services
from tests.support.waiting import until
from tests.unit.controller.test_controller import Harness

SPEC = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 4
    scaleTarget: 2
    autoscaling: {stableWindowSeconds: 10, panicWindowSeconds: 2, scaleToZeroGracePeriodSeconds: 5}
    model: {modelFormat: {name: huggingface}, storageUri: file:///models/chat}
"""


class FakeDemand:
    def __init__(self) -> None:
        self.now = Demand()

    def demand(self, service: str) -> Demand:
        return self.now

    def revision_demand(self, service: str, revision: str) -> Demand:
        return self.now if revision == "" else Demand()  # as an older gateway reports it: unattributed


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def service() -> InferenceService:
    return parse_services(SPEC)[0]


@pytest.fixture
async def scaled() -> AsyncIterator[tuple[Harness, Autoscaler, FakeDemand, Clock]]:
    harness = Harness()
    demand = FakeDemand()
    clock = Clock()
    autoscaler = Autoscaler(harness.controller, demand, clock=clock)
    harness.registry.on_wake(autoscaler.wake)
    await harness.controller.start()
    harness.controller.apply([service()])
    await until(lambda: harness.controller.status()[0]["model_dir"] is not None)
    yield harness, autoscaler, demand, clock
    await harness.controller.stop()


async def test_wake_at_zero_starts_a_replica_at_once(scaled: tuple[Harness, Autoscaler, FakeDemand, Clock]) -> None:
    harness, _, _, _ = scaled
    assert harness.controller.desired("chat") == 0
    harness.registry.wake("chat")  # what the activator does when it holds a request
    assert harness.controller.desired("chat") == 1
    await until(lambda: harness.ready() == 1)
    assert len(harness.controller.cold_starts("chat")) == 1


async def test_load_scales_up_and_idle_scales_to_zero(scaled: tuple[Harness, Autoscaler, FakeDemand, Clock]) -> None:
    harness, autoscaler, demand, clock = scaled
    demand.now = Demand(in_flight=0, held=7, arrived=7)
    for _ in range(3):
        clock.t += 1
        autoscaler.tick()
    assert harness.controller.desired("chat") == 4  # 7 waiting / 2 per replica, capped at maxReplicas
    await until(lambda: harness.ready() == 4)
    demand.now = Demand(arrived=7)
    for _ in range(20):  # quiet for longer than the stable window and the grace period
        clock.t += 1
        autoscaler.tick()
        # a second passes between ticks in real life: the controller has applied the decision by then
        await until(lambda: harness.controller.ready_count("chat") <= harness.controller.desired("chat"))
    assert harness.controller.desired("chat") == 0
    await until(lambda: harness.backend.live() == [])
    assert harness.registry.ready_endpoints("chat") == ()
    assert autoscaler.decisions()["chat"] is not None


async def test_requests_between_ticks_keep_it_alive(scaled: tuple[Harness, Autoscaler, FakeDemand, Clock]) -> None:
    harness, autoscaler, demand, clock = scaled
    harness.registry.wake("chat")
    await until(lambda: harness.ready() == 1)
    for second in range(30):
        demand.now = Demand(arrived=second + 1)  # one short request per second, never in flight at a tick
        clock.t += 1
        autoscaler.tick()
    assert harness.controller.desired("chat") == 1


async def test_fixed_services_are_left_alone(scaled: tuple[Harness, Autoscaler, FakeDemand, Clock]) -> None:
    harness, autoscaler, demand, clock = scaled
    fixed = SPEC.replace("minReplicas: 0", "minReplicas: 2").replace("maxReplicas: 4", "maxReplicas: 2")
    harness.controller.apply(parse_services(fixed))
    demand.now = Demand(held=100, arrived=100)
    clock.t += 1
    autoscaler.tick()
    assert harness.controller.desired("chat") == 2
