"""The autoscaling loop: every tick, read each autoscaled service's demand from the gateways, run the policy,
and set the controller's desired replicas. Each revision that serves is scaled on its own share of the demand
(what gateways routed to it; what they reported without a revision counts for the revision serving most of the
traffic); a service's transformer on the service's whole demand. A wake (a request held at zero replicas) acts at
once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.autoscaling.policy import AutoscalingConfig, Decision, PolicyState, decide
from controller.reconciler import Controller
from llmserve.endpoints import Demand, DemandReader
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


def transformer_config_for(service: InferenceService) -> AutoscalingConfig | None:
    """The transformer's scaling (requests in flight per replica; the predictor's windows), if it scales."""
    transformer = service.spec.transformer
    if transformer is None or transformer.replica_ceiling <= max(1, transformer.min_replicas):
        return None
    knobs = service.spec.predictor.autoscaling
    return AutoscalingConfig(
        target=transformer.scale_target,
        min_replicas=transformer.min_replicas,
        max_replicas=transformer.replica_ceiling,
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
        self._tracked: dict[tuple[str, str | None], _Tracked] = {}  # by (service, revision); None: transformer
        self._primary: dict[str, str | None] = {}
        self._task: asyncio.Task[None] | None = None

    def wake(self, service: str) -> None:
        """A request is held for `service`: ask for a replica now, without waiting for the next tick."""
        if self.controller.wake(service):
            log.info("service %s: request waiting at zero replicas, scaling to 1", service)

    def decisions(self) -> dict[str, Decision | None]:
        """The last decision per service: the one of the revision that serves most of its traffic."""
        out: dict[str, Decision | None] = {}
        for (name, revision), tracked in self._tracked.items():
            if revision is not None and (name not in out or revision == self._primary.get(name)):
                out[name] = tracked.last
        return out

    def revision_decisions(self) -> dict[tuple[str, str], Decision | None]:
        return {(name, rev): t.last for (name, rev), t in self._tracked.items() if rev is not None}

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def tick(self) -> None:
        now = self.clock()
        live: set[tuple[str, str | None]] = set()
        for service in self.controller.services():
            name = service.name
            predictor = service.spec.predictor
            if predictor.autoscaled:
                live.update(self._scale_revisions(service, now))
            config = transformer_config_for(service)
            current = self.controller.transformer_desired(name)
            if config is not None and current is not None:
                live.add((name, None))
                load = self._load(name, None, self.demand.demand(name), tokens=False)
                decision = self._decide((name, None), config, now, load, self.controller.transformer_ready(name))
                if decision.desired != current:
                    log.info("service %s: transformer %d -> %d replicas (%s)", name, current, decision.desired,
                             decision.reason)  # fmt: skip
                    self.controller.set_transformer_desired(name, decision.desired)
        for key in [k for k in self._tracked if k not in live]:
            del self._tracked[key]
        for name in [n for n in self._primary if not self.controller.has_service(n)]:
            del self._primary[name]

    def _scale_revisions(self, service: InferenceService, now: float) -> list[tuple[str, str | None]]:
        name = service.name
        tokens = service.spec.predictor.scale_metric == "tokens"
        primary = self._primary[name] = self.controller.primary_revision(name)
        scaled: list[tuple[str, str | None]] = []
        for revision in self.controller.scaled_revisions(name):
            scaled.append((name, revision))
            seen = self.demand.revision_demand(name, revision)
            if revision == primary:
                seen = _plus(seen, self.demand.revision_demand(name, ""))
            load = self._load(name, revision, seen, tokens=tokens)
            ready = self.controller.ready_count(name, revision)
            decision = self._decide((name, revision), config_for(service), now, load, ready)
            current = self.controller.desired(name, revision)
            if decision.desired != current:
                log.info("service %s: revision %s %d -> %d replicas (%s)", name, revision, current, decision.desired,
                         decision.reason)  # fmt: skip
                self.controller.set_desired(name, decision.desired, revision=revision)
        return scaled

    def _load(self, name: str, revision: str | None, seen: Demand, *, tokens: bool) -> float:
        tracked = self._tracked.setdefault((name, revision), _Tracked())
        load = float(seen.in_flight_tokens + seen.held_tokens) if tokens else float(seen.in_flight + seen.held)
        if load == 0 and seen.arrived > tracked.arrived:
            load = 1.0  # requests came and went between two ticks: the service is not idle
        tracked.arrived = seen.arrived
        return load

    def _decide(
        self, key: tuple[str, str | None], config: AutoscalingConfig, now: float, load: float, ready: int
    ) -> Decision:
        tracked = self._tracked.setdefault(key, _Tracked())
        decision, tracked.state = decide(config, now, load, ready, tracked.state)
        tracked.last = decision
        return decision

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("autoscaling tick failed")
            await asyncio.sleep(self.tick_s)


def _plus(a: Demand, b: Demand) -> Demand:
    return Demand(
        a.in_flight + b.in_flight,
        a.in_flight_tokens + b.in_flight_tokens,
        a.held + b.held,
        a.held_tokens + b.held_tokens,
        a.arrived + b.arrived,
    )
