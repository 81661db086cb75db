"""The controller: declared InferenceServices in, supervised replicas out.

`apply()` declares the services (the gateway can list them at once); a reconcile loop pulls each model once
(in a thread: pulls print progress and may convert weights) and then keeps the number of replicas at the desired
count, which is `minReplicas` until an autoscaler sets it with `set_desired()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.backends import Backend
from controller.replica import BusyProbe, HealthCheck, Replica
from controller.settings import ControllerSettings
from llmserve import storage
from llmserve.endpoints import EndpointWriter, ServiceInfo
from llmserve.spec import InferenceService
from llmserve.spec.models import parse_quantity
from llmserve.workers import WorkerPlan
from llmserve.workers.retriever import retriever_plan
from llmserve.workers.sim.plan import sim_plan
from llmserve.workers.v2 import v2_plan
from llmserve.workers.vllm import vllm_plan
from llmserve.workers.vllm_metrics import parse_vllm_metrics

log = logging.getLogger("llmserve.controller")

PullFn = Callable[[InferenceService], Path]
PlanFn = Callable[[InferenceService, Path], WorkerPlan]


def pull_model(service: InferenceService) -> Path:
    model = service.spec.predictor.model
    if service.protocol == "v2":  # predictive artifacts are served as fetched (no LLM preparation)
        return storage.fetch_model_dir(model.storage_uri)
    return storage.pull(model.storage_uri, model.model_format.name, progress=storage.stderr_progress)


def plan_for(python: str | None) -> PlanFn:
    """The worker plan of each runtime, carrying its service's resource requests."""
    return with_spec_resources(_runtime_plan(python))


def spec_resources(service: InferenceService) -> dict[str, float]:
    """A service's `resources.requests` in Ray's names: cpu -> CPU, gpu -> GPU, memory -> memory (bytes)."""
    requests = service.spec.predictor.model.resources.requests
    resources: dict[str, float] = {}
    if requests.cpu is not None:
        resources["CPU"] = parse_quantity(requests.cpu)
    if requests.gpu:
        resources["GPU"] = float(requests.gpu)
    if requests.memory is not None:
        resources["memory"] = parse_quantity(requests.memory)
    return resources


def with_spec_resources(
    plan: Callable[[InferenceService, Path], WorkerPlan],
) -> Callable[[InferenceService, Path], WorkerPlan]:
    """Wrap a controller plan function so that each plan carries its service's resource requests."""

    def planned(service: InferenceService, model_dir: Path) -> WorkerPlan:
        made = plan(service, model_dir)
        return made if made.resources else dataclasses.replace(made, resources=spec_resources(service))

    return planned


def _runtime_plan(python: str | None) -> PlanFn:
    def plan(service: InferenceService, model_dir: Path) -> WorkerPlan:
        if service.runtime == "vllm":
            return vllm_plan(service, model_dir, python=python)
        if service.runtime == "vllm-sim":
            model = service.spec.predictor.model
            tokenizer = str(model_dir) if (model_dir / "tokenizer.json").is_file() else None
            plan = sim_plan(service.served_model_name, args=model.args, tokenizer=tokenizer, python=python)
            return dataclasses.replace(plan, env={**plan.env, **{v.name: v.value for v in model.env}})
        if service.runtime == "llmserve-v2":
            return v2_plan(service, model_dir, python=python)
        if service.runtime == "llmserve-retriever":
            return retriever_plan(service, model_dir, python=python)
        raise ValueError(f"no runtime named '{service.runtime}'")

    return plan


def http_probes() -> tuple[HealthCheck, BusyProbe, Callable[[], Any]]:
    """Over HTTP: a health check (200 = healthy), a busy probe (vLLM's running + waiting requests from /metrics),
    and the function that closes their client."""
    client = httpx.AsyncClient()

    async def check(url: str, limit_s: float) -> bool:
        try:
            response = await client.get(url, timeout=limit_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def busy(url: str) -> float | None:
        try:
            response = await client.get(f"{url}/metrics", timeout=5)
        except httpx.HTTPError:
            return None
        if response.status_code != 200 or "vllm:num_requests_running" not in response.text:
            return None
        scraped = parse_vllm_metrics(response.text)
        return scraped.running + scraped.waiting

    return check, busy, client.aclose


@dataclass
class ServiceState:
    service: InferenceService
    desired: int
    model_dir: Path | None = None
    pull_error: str | None = None
    pulling: asyncio.Task[None] | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)
    next_index: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    cold_start_began: float | None = None  # set when scaling up from zero; cleared by the first ready replica
    cold_starts: list[float] = field(default_factory=list)  # durations, seconds
    restarts_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        predictor = self.service.spec.predictor
        return {
            "name": self.service.name,
            "model": self.service.served_model_name,
            "runtime": self.service.runtime,
            "storage_uri": predictor.model.storage_uri,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "pull_error": self.pull_error,
            "min_replicas": predictor.min_replicas,
            "max_replicas": predictor.replica_ceiling,
            "desired_replicas": self.desired,
            "ready_replicas": sum(r.ready for r in self.replicas.values()),
            "replicas": [r.record.as_dict() for r in self.replicas.values()],
        }


class Controller:
    def __init__(
        self,
        backend: Backend,
        registry: EndpointWriter,
        settings: ControllerSettings | None = None,
        *,
        pull: PullFn = pull_model,
        plan: PlanFn | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        self.settings = settings or ControllerSettings()
        self.backend = backend
        self.registry = registry
        self._pull = pull
        self._plan = plan or plan_for(self.settings.python)
        self._close_health: Callable[[], Any] | None = None
        default_health, self._busy, self._close_health = http_probes()
        self._health = health or default_health
        self._services: dict[str, ServiceState] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- desired state ------------------------------------------------------------------------------------------
    def apply(self, services: list[InferenceService]) -> None:
        """Make `services` the declared set (new ones added, changed ones replaced, missing ones removed)."""
        wanted = {s.name: s for s in services}
        for name in list(self._services):
            if name not in wanted or wanted[name] != self._services[name].service:
                self._retire(name)
        for name, service in wanted.items():
            if name in self._services:
                continue
            state = self._services[name] = ServiceState(service, desired=service.spec.predictor.min_replicas)
            self._declare(state)
        self._wake.set()

    def _declare(self, state: ServiceState) -> None:
        predictor = state.service.spec.predictor
        self.registry.declare_service(
            ServiceInfo(
                name=state.service.name,
                model_name=state.service.served_model_name,
                protocol=state.service.protocol,
                min_replicas=predictor.min_replicas,
                created=state.created,
                routing_profile=predictor.routing.profile,
                tokenizer_dir=str(state.model_dir) if state.model_dir else None,
            )
        )

    def set_desired(self, name: str, replicas: int) -> int:
        """Ask for `replicas` of a service (clamped to its min/max); returns what was set."""
        state = self._services[name]
        predictor = state.service.spec.predictor
        desired = max(predictor.min_replicas, min(replicas, predictor.replica_ceiling))
        if state.desired == 0 and desired > 0 and self.ready_count(name) == 0:
            state.cold_start_began = time.monotonic()
        state.desired = desired
        self._wake.set()
        return state.desired

    def has_service(self, name: str) -> bool:
        return name in self._services

    def services(self) -> list[InferenceService]:
        return [state.service for state in self._services.values()]

    def desired(self, name: str) -> int:
        return self._services[name].desired

    def ready_count(self, name: str) -> int:
        state = self._services.get(name)
        return sum(r.ready for r in state.replicas.values()) if state else 0

    def cold_starts(self, name: str) -> list[float]:
        state = self._services.get(name)
        return list(state.cold_starts) if state else []

    def status(self) -> list[dict[str, Any]]:
        return [state.as_dict() for state in self._services.values()]

    def replicas(self, name: str) -> list[Replica]:
        return list(self._services[name].replicas.values())

    # -- lifecycle ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.backend.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_forever(), name="reconciler")

    async def stop(self) -> None:
        """Stop every replica (no orphans) and the loop."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        stops = []
        for state in self._services.values():
            if state.pulling is not None:
                state.pulling.cancel()
            stops += [replica.stop() for replica in state.replicas.values()]
        await asyncio.gather(*stops, *self._retiring, return_exceptions=True)
        await self.backend.close()
        if self._close_health is not None:
            await self._close_health()

    async def _reconcile_forever(self) -> None:
        while not self._closed:
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def reconcile(self) -> None:
        for state in list(self._services.values()):
            if state.model_dir is None:
                self._ensure_pulling(state)
                continue
            replicas = state.replicas
            while len(replicas) < state.desired:
                self._add_replica(state)
            excess = len(replicas) - state.desired
            if excess > 0:
                # Remove replicas that are not serving first, then the newest.
                order = sorted(replicas.values(), key=lambda r: (r.ready, r.record.started_at or 0.0))
                for replica in order[:excess]:
                    del replicas[replica.replica_id]
                    self._stop_later(replica, drain_s=self.settings.drain_s)

    # -- internals ------------------------------------------------------------------------------------------------
    def _ensure_pulling(self, state: ServiceState) -> None:
        if state.pulling is not None:
            return

        async def pull() -> None:
            name = state.service.name
            try:
                state.model_dir = await asyncio.to_thread(self._pull, state.service)
                state.pull_error = None
                if self._services.get(name) is state:
                    self._declare(state)  # the gateway may now read the model's tokenizer
                log.info("service %s: model ready at %s", name, state.model_dir)
                state.pulling = None
            except Exception as exc:
                state.pull_error = str(exc)
                log.error("service %s: pull failed: %s (retry in %.0f s)", name, exc, self.settings.pull_retry_s)
                await asyncio.sleep(self.settings.pull_retry_s)
                state.pulling = None
            self._wake.set()

        state.pulling = asyncio.get_running_loop().create_task(pull(), name=f"pull {state.service.name}")

    def _add_replica(self, state: ServiceState) -> None:
        assert state.model_dir is not None
        service = state.service
        replica_id = f"{service.name}-{state.next_index}"
        state.next_index += 1
        plan = self._plan(service, state.model_dir)
        replica = Replica(
            replica_id,
            service.name,
            plan,
            self.backend,
            self.registry,
            self.settings,
            self._health,
            on_ready=lambda: self._replica_ready(state),
            busy=self._busy,
        )
        state.replicas[replica_id] = replica
        replica.start()

    @staticmethod
    def _replica_ready(state: ServiceState) -> None:
        if state.cold_start_began is not None:
            took = time.monotonic() - state.cold_start_began
            state.cold_starts.append(took)
            state.cold_start_began = None
            log.info("service %s: cold start took %.1f s", state.service.name, took)

    def _retire(self, name: str) -> None:
        state = self._services.pop(name)
        if state.pulling is not None:
            state.pulling.cancel()
        for replica in state.replicas.values():
            self._stop_later(replica, drain_s=self.settings.drain_s)
        self.registry.withdraw_service(name)

    def _stop_later(self, replica: Replica, drain_s: float = 0.0) -> None:
        task = asyncio.get_running_loop().create_task(replica.stop(drain_s), name=f"stop {replica.replica_id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
