"""The autoscaling loop: every tick, read each autoscaled service's demand from the gateway, run the policy,
and set the controller's desired replicas. A wake (a request held at zero replicas) acts at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.autoscaling.policy import AutoscalingConfig, Decision, PolicyState, decide
from controller.reconciler import Controller
from llmserve.endpoints import DemandReader
from llmserve.spec import InferenceService

log = logging.getLogger("llmserve.autoscaler")


def config_for(service: InferenceService) -> AutoscalingConfig:
    predictor = service.spec.predictor
    knobs = predictor.autoscaling
    return AutoscalingConfig(
        target=predictor.target,
        min_replicas=predictor.min_replicas,
        max_replicas=predictor.replica_ceiling,
        stable_window_s=knobs.stable_window_s,
        panic_window_s=knobs.panic_window_s,
        panic_threshold=knobs.panic_threshold,
        max_scale_up_rate=knobs.max_scale_up_rate,
        max_scale_down_rate=knobs.max_scale_down_rate,
        scale_to_zero_grace_s=knobs.scale_to_zero_grace_s,
    )


@dataclass
class _Tracked:
    state: PolicyState = field(default_factory=PolicyState)
    arrived: int = 0
    last: Decision | None = None


class Autoscaler:
    def __init__(
        self,
        controller: Controller,
        demand: DemandReader,
        *,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller
        self.demand = demand
        self.tick_s = tick_s
        self.clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._task: asyncio.Task[None] | None = None

    def wake(self, service: str) -> None:
        """A request is held for `service`: ask for a replica now, without waiting for the next tick."""
        if self.controller.has_service(service) and self.controller.desired(service) == 0:
            log.info("service %s: request waiting at zero replicas, scaling to 1", service)
            self.controller.set_desired(service, 1)

    def decisions(self) -> dict[str, Decision | None]:
        return {name: tracked.last for name, tracked in self._tracked.items()}

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def tick(self) -> None:
        now = self.clock()
        for service in self.controller.services():
            predictor = service.spec.predictor
            if not predictor.autoscaled:
                continue
            tracked = self._tracked.setdefault(service.name, _Tracked())
            seen = self.demand.demand(service.name)
            if predictor.scale_metric == "tokens":
                load = float(seen.in_flight_tokens + seen.held_tokens)
            else:
                load = float(seen.in_flight + seen.held)
            if load == 0 and seen.arrived > tracked.arrived:
                load = 1.0  # requests came and went between two ticks: the service is not idle
            tracked.arrived = seen.arrived
            ready = self.controller.ready_count(service.name)
            decision, tracked.state = decide(config_for(service), now, load, ready, tracked.state)
            tracked.last = decision
            if decision.desired != self.controller.desired(service.name):
                log.info(
                    "service %s: %d -> %d replicas (%s)",
                    service.name,
                    self.controller.desired(service.name),
                    decision.desired,
                    decision.reason,
                )
                self.controller.set_desired(service.name, decision.desired)
        for name in [n for n in self._tracked if not self.controller.has_service(n)]:
            del self._tracked[name]

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("autoscaling tick failed")
            await asyncio.sleep(self.tick_s)
