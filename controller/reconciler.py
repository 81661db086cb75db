"""The controller: declared InferenceServices in, supervised replicas out.

`apply()` creates or changes services (gateways can list a new one at once), `delete()` removes one. Each
service has revisions: a change to what its workers run (the predictor's model, runtime, args, env, resources,
batcher) is a new revision; other changes (replica bounds, autoscaling, routing) apply in place. A reconcile loop
pulls each revision's model once (in a thread: pulls print progress and may convert weights) and keeps the number of
replicas at the desired count, which is `minReplicas` until an autoscaler sets it with `set_desired()`.

Rollout: the revision that serves traffic keeps serving while a newer one starts; once the newer one has as many
ready replicas as the serving one had (at least one), gateways are switched to it in one change and the old
revision's replicas are drained and stopped. A revision that never becomes ready never gets traffic; its replicas'
failures show in status.

InferenceGraphs applied with services are kept beside them (controller/graphs.py: checked against the running
services, published to gateways, saved); a service a graph calls cannot be deleted while the graph does.

With a state directory, services, graphs and the replicas that outlive the controller (local keepers) are written down;
`start()` re-adopts the replicas that are still running and healthy and whose revision template is unchanged, and
stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.backends import Backend
from controller.graphs import GraphCatalog, GraphWriter
from controller.replica import BusyProbe, HealthCheck, Replica
from controller.settings import ControllerSettings
from controller.statedir import ReplicaEntry, StateDir
from llmserve import storage
from llmserve.endpoints import Endpoint, EndpointWriter, ServiceInfo
from llmserve.protocol.vllm_metrics import parse_vllm_metrics
from llmserve.spec import InferenceGraph, InferenceService, SpecError
from llmserve.spec.models import parse_quantity
from llmserve.workers import WorkerPlan
from llmserve.workers.retriever import retriever_plan
from llmserve.workers.sim.plan import sim_plan
from llmserve.workers.tracing import WorkerTracing
from llmserve.workers.v2 import v2_plan
from llmserve.workers.vllm import vllm_plan

log = logging.getLogger("llmserve.controller")

PullFn = Callable[[InferenceService], Path]
PlanFn = Callable[[InferenceService, Path], WorkerPlan]


def pull_model(service: InferenceService) -> Path:
    model = service.spec.predictor.model
    if service.protocol == "v2":  # predictive artifacts are served as fetched (no LLM preparation)
        return storage.fetch_model_dir(model.storage_uri)
    return storage.pull(model.storage_uri, model.model_format.name, progress=storage.stderr_progress)


def plan_for(python: str | None, tracing: WorkerTracing | None = None) -> PlanFn:
    """The worker plan of each runtime, carrying its service's resource requests (`tracing`: vLLM replicas and
    the simulator get --otlp-traces-endpoint)."""
    return with_spec_resources(_runtime_plan(python, tracing))


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


def _runtime_plan(python: str | None, tracing: WorkerTracing | None = None) -> PlanFn:
    def plan(service: InferenceService, model_dir: Path) -> WorkerPlan:
        if service.runtime == "vllm":
            return vllm_plan(service, model_dir, python=python, tracing=tracing)
        if service.runtime == "vllm-sim":
            model = service.spec.predictor.model
            tokenizer = str(model_dir) if (model_dir / "tokenizer.json").is_file() else None
            args = [*tracing.flags(), *model.args] if tracing is not None else model.args
            plan = sim_plan(service.served_model_name, args=args, tokenizer=tokenizer, python=python)
            return dataclasses.replace(plan, env={**plan.env, **{v.name: v.value for v in model.env}})
        if service.runtime == "llmserve-v2":
            return v2_plan(service, model_dir, python=python)
        if service.runtime == "llmserve-retriever":
            return retriever_plan(service, model_dir, python=python)
        raise ValueError(f"no runtime named '{service.runtime}'")

    return plan


GATEWAY_URL_ENV = "LLMSERVE_GATEWAY_URL"
GATEWAY_KEY_ENV = "LLMSERVE_GATEWAY_API_KEY"


def with_gateway_env(plan: PlanFn, settings: ControllerSettings) -> PlanFn:
    """Tell every replica where the gateway is (LLMSERVE_GATEWAY_URL, and LLMSERVE_GATEWAY_API_KEY when it takes
    keys), when the controller knows: a replica that calls other services (the retriever embeds through the
    gateway) needs no address in its spec. The spec's own env wins."""
    extra: dict[str, str] = {}
    if settings.gateway_url is not None:
        extra[GATEWAY_URL_ENV] = settings.gateway_url
    if settings.gateway_api_key is not None:
        extra[GATEWAY_KEY_ENV] = settings.gateway_api_key.get_secret_value()
    if not extra:
        return plan

    def planned(service: InferenceService, model_dir: Path) -> WorkerPlan:
        made = plan(service, model_dir)
        return dataclasses.replace(made, env={**extra, **made.env})

    return planned


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


def template_of(service: InferenceService) -> str:
    """A hash of what a service's workers run: a change to it is a new revision (and adopted replicas must match)."""
    predictor = service.spec.predictor
    parts = {
        "runtime": service.runtime,
        "model": predictor.model.model_dump(mode="json", by_alias=True),
        "batcher": predictor.batcher.model_dump(mode="json", by_alias=True) if predictor.batcher else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RevisionState:
    """One revision of a service: the spec its workers run, its model, its replicas."""

    name: str
    generation: int
    service: InferenceService
    template: str
    model_dir: Path | None = None
    pull_error: str | None = None
    pulling: asyncio.Task[None] | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)
    next_index: int = 0
    created: float = field(default_factory=time.time)

    def ready_count(self) -> int:
        return sum(r.ready for r in self.replicas.values())

    def as_dict(self, traffic: int) -> dict[str, Any]:
        failures = [r.record.last_exit for r in self.replicas.values() if r.record.last_exit and not r.ready]
        return {
            "name": self.name,
            "generation": self.generation,
            "template": self.template,
            "traffic_percent": traffic,
            "ready_replicas": self.ready_count(),
            "replicas": len(self.replicas),
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "pull_error": self.pull_error,
            "failure": self.pull_error or (failures[-1] if failures else None),
            "created": self.created,
        }


@dataclass
class ServiceState:
    service: InferenceService  # the latest applied spec
    desired: int
    revisions: list[RevisionState] = field(default_factory=list)  # oldest first; the last is the latest
    serving: RevisionState | None = None  # the revision gateways send traffic to
    created: int = field(default_factory=lambda: int(time.time()))
    cold_start_began: float | None = None  # set when scaling up from zero; cleared by the first ready replica
    cold_starts: list[float] = field(default_factory=list)  # durations, seconds

    @property
    def latest(self) -> RevisionState:
        return self.revisions[-1]

    @property
    def model_dir(self) -> Path | None:
        revision = self.serving or self.latest
        return revision.model_dir

    def replicas(self) -> list[Replica]:
        return [r for revision in self.revisions for r in revision.replicas.values()]

    def ready_count(self) -> int:
        return self.serving.ready_count() if self.serving is not None else 0

    def as_dict(self) -> dict[str, Any]:
        predictor = self.service.spec.predictor
        latest = self.latest
        return {
            "name": self.service.name,
            "model": self.service.served_model_name,
            "runtime": self.service.runtime,
            "protocol": self.service.protocol,
            "storage_uri": predictor.model.storage_uri,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "pull_error": latest.pull_error,
            "min_replicas": predictor.min_replicas,
            "max_replicas": predictor.replica_ceiling,
            "desired_replicas": self.desired,
            "ready_replicas": self.ready_count(),
            "serving_revision": self.serving.name if self.serving else None,
            "latest_revision": latest.name,
            "revisions": [r.as_dict(100 if r is self.serving else 0) for r in self.revisions],
            "replicas": [r.record.as_dict() for r in self.replicas()],
        }


class _Publisher:
    """A service's view for gateways: the ready replicas of the revision that serves its traffic."""

    def __init__(self, controller: Controller, name: str) -> None:
        self._controller = controller
        self._name = name
        self._ready: dict[str, Endpoint] = {}

    def publish(self, endpoint: Endpoint) -> None:
        self._ready[endpoint.replica_id] = endpoint
        self.refresh()

    def unpublish(self, service: str, replica_id: str) -> None:
        if self._ready.pop(replica_id, None) is not None:
            self.refresh()

    def refresh(self) -> None:
        state = self._controller._services.get(self._name)
        if state is None:
            return
        serving = state.serving.name if state.serving is not None else None
        visible = tuple(e for e in self._ready.values() if e.revision == serving)
        self._controller.registry.set_endpoints(self._name, visible)


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
        state_dir: StateDir | None = None,
        graphs: GraphWriter | None = None,
    ) -> None:
        self.settings = settings or ControllerSettings()
        self.backend = backend
        self.registry = registry
        self.state_dir = state_dir
        self._pull = pull
        planned = plan or plan_for(self.settings.python, self.settings.worker_tracing)
        self._plan = with_gateway_env(planned, self.settings)
        self._close_health: Callable[[], Any] | None = None
        default_health, self._busy, self._close_health = http_probes()
        self._health = health or default_health
        self._services: dict[str, ServiceState] = {}
        self._publishers: dict[str, _Publisher] = {}
        self.graphs = GraphCatalog(graphs)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- desired state ------------------------------------------------------------------------------------------
    def check(self, services: list[InferenceService]) -> None:
        """Refuse (SpecError) services that would clash with the running ones: a served model name taken by
        another service."""
        incoming = {s.name for s in services}
        taken = {
            state.service.served_model_name: name for name, state in self._services.items() if name not in incoming
        }
        for service in services:
            other = taken.get(service.served_model_name)
            if other is not None:
                raise SpecError(
                    f"{service.name}: spec.predictor.model.servedModelName: '{service.served_model_name}' is "
                    f"already served by service '{other}'."
                )

    def apply(
        self, services: list[InferenceService], graphs: list[InferenceGraph] | None = None, *, source: str = "apply"
    ) -> list[str]:
        """Create or change `services` and `graphs` (others are left as they are); what happened to each, for the
        caller. Nothing is applied unless all of them fit (SpecError)."""
        self.check(services)
        graphs = graphs or []
        self.graphs.check(graphs, services, {name: state.service for name, state in self._services.items()}, source)
        outcome = []
        for service in services:
            outcome.append(self._apply_one(service))
        outcome += self.graphs.apply(graphs)
        self._save()
        self._wake.set()
        return outcome

    def delete(self, name: str) -> bool:
        """Remove a service: gateways stop routing to it at once, its replicas are drained and stopped.
        ServiceInUse (nothing removed) while an InferenceGraph calls it."""
        if name not in self._services:
            return False
        self.graphs.check_delete_service(name)
        self._retire(name)
        self._save()
        self._wake.set()
        return True

    def _apply_one(self, service: InferenceService) -> str:
        name = service.name
        state = self._services.get(name)
        predictor = service.spec.predictor
        if state is None:
            state = self._services[name] = ServiceState(service, desired=predictor.min_replicas)
            self._publishers[name] = _Publisher(self, name)
            self._new_revision(state, service)
            self._declare(state)
            return f"{name}: created (revision {state.latest.name})"
        if state.service == service:
            return f"{name}: unchanged"
        state.service = service
        state.desired = max(predictor.min_replicas, min(state.desired, predictor.replica_ceiling))
        if template_of(service) != state.latest.template:
            self._new_revision(state, service)
            self._declare(state)
            return f"{name}: changed (new revision {state.latest.name}; the current one serves until it is ready)"
        state.latest.service = service
        if state.serving is not None:
            state.serving.service = service
        self._declare(state)
        return f"{name}: changed in place (revision {state.latest.name})"

    def delete_graph(self, name: str) -> bool:
        """Remove an InferenceGraph: gateways stop serving it at once."""
        if not self.graphs.delete(name):
            return False
        self._save()
        return True

    def graph_status(self) -> list[dict[str, Any]]:
        def min_replicas(name: str) -> int:
            state = self._services.get(name)
            return state.service.spec.predictor.min_replicas if state else 1

        return self.graphs.status(self.ready_count, min_replicas)

    def _new_revision(self, state: ServiceState, service: InferenceService) -> RevisionState:
        generation = state.revisions[-1].generation + 1 if state.revisions else 1
        revision = RevisionState(f"{service.name}-{generation:05d}", generation, service, template_of(service))
        # Revisions that are neither serving nor about to are stopped now (a change superseding another change).
        for old in list(state.revisions):
            if old is not state.serving:
                self._stop_revision(state, old)
        state.revisions.append(revision)
        return revision

    def _declare(self, state: ServiceState) -> None:
        predictor = state.service.spec.predictor
        model_dir = state.model_dir
        self.registry.declare_service(
            ServiceInfo(
                name=state.service.name,
                model_name=state.service.served_model_name,
                protocol=state.service.protocol,
                min_replicas=predictor.min_replicas,
                created=state.created,
                routing_profile=predictor.routing.profile,
                tokenizer_dir=str(model_dir) if model_dir else None,
                revision=state.serving.name if state.serving else "",
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

    def suspect(self, service: str, replica_id: str) -> bool:
        """A gateway could not use a replica: check it now (it is replaced if its health check fails)."""
        state = self._services.get(service)
        replica = next((r for r in state.replicas() if r.replica_id == replica_id), None) if state else None
        if replica is None:
            return False
        replica.check_now()
        return True

    def has_service(self, name: str) -> bool:
        return name in self._services

    def services(self) -> list[InferenceService]:
        return [state.service for state in self._services.values()]

    def service(self, name: str) -> InferenceService | None:
        state = self._services.get(name)
        return state.service if state else None

    def desired(self, name: str) -> int:
        return self._services[name].desired

    def ready_count(self, name: str) -> int:
        state = self._services.get(name)
        return state.ready_count() if state else 0

    def cold_starts(self, name: str) -> list[float]:
        state = self._services.get(name)
        return list(state.cold_starts) if state else []

    def status(self) -> list[dict[str, Any]]:
        return [state.as_dict() for state in self._services.values()]

    def replicas(self, name: str) -> list[Replica]:
        return self._services[name].replicas()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the backend, restore saved services and adopt their surviving replicas, then reconcile."""
        await self.backend.start()
        if self.state_dir is not None:
            self._restore()
            await self._adopt()
        self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_forever(), name="reconciler")

    async def stop(self, *, keep_workers: bool = False) -> None:
        """Stop every replica (no orphans) and the loop; with `keep_workers`, leave the replicas running for the
        next controller to adopt (their leases run out if none does)."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        stops = []
        for state in self._services.values():
            for revision in state.revisions:
                if revision.pulling is not None:
                    revision.pulling.cancel()
            for replica in state.replicas():
                stops.append(replica.detach() if keep_workers else replica.stop())
        await asyncio.gather(*stops, *self._retiring, return_exceptions=True)
        if keep_workers:
            await self.backend.release()
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
            self._roll_out(state)
            for revision in list(state.revisions):
                target = state.desired if revision is state.latest or revision is state.serving else 0
                if revision.model_dir is None:
                    if target > 0 or revision is state.latest:
                        self._ensure_pulling(state, revision)
                    continue
                self._scale(state, revision, target)

    def _roll_out(self, state: ServiceState) -> None:
        """Switch traffic to the latest revision once it can take it; stop revisions that no longer serve."""
        latest = state.latest
        serving = state.serving
        if serving is latest:
            return
        if serving is None:
            switch = True  # the first revision serves as soon as it exists (its replicas publish when ready)
        else:
            needed = max(1, min(state.desired, serving.ready_count())) if state.desired > 0 else 0
            switch = latest.model_dir is not None and latest.ready_count() >= needed
        if not switch:
            return
        state.serving = latest
        if serving is not None:
            log.info("service %s: traffic switched from %s to %s", state.service.name, serving.name, latest.name)
        self._declare(state)
        self._publishers[state.service.name].refresh()
        for old in list(state.revisions):
            if old is not latest:
                self._stop_revision(state, old)
        self._save()

    def _scale(self, state: ServiceState, revision: RevisionState, target: int) -> None:
        replicas = revision.replicas
        while len(replicas) < target:
            self._add_replica(state, revision)
        excess = len(replicas) - target
        if excess > 0:
            # Remove replicas that are not serving first, then the newest.
            order = sorted(replicas.values(), key=lambda r: (r.ready, r.record.started_at or 0.0))
            for replica in order[:excess]:
                del replicas[replica.replica_id]
                self._stop_later(replica, drain_s=self.settings.drain_s)

    # -- internals ------------------------------------------------------------------------------------------------
    def _ensure_pulling(self, state: ServiceState, revision: RevisionState) -> None:
        if revision.pulling is not None:
            return

        async def pull() -> None:
            name = state.service.name
            try:
                revision.model_dir = await asyncio.to_thread(self._pull, revision.service)
                revision.pull_error = None
                if self._services.get(name) is state:
                    self._declare(state)  # the gateway may now read the model's tokenizer
                log.info("service %s: model of %s ready at %s", name, revision.name, revision.model_dir)
                revision.pulling = None
            except Exception as exc:
                revision.pull_error = str(exc)
                log.error("service %s: pull failed: %s (retry in %.0f s)", name, exc, self.settings.pull_retry_s)
                await asyncio.sleep(self.settings.pull_retry_s)
                revision.pulling = None
            self._wake.set()

        revision.pulling = asyncio.get_running_loop().create_task(pull(), name=f"pull {revision.name}")

    def _new_replica(self, state: ServiceState, revision: RevisionState, index: int) -> Replica:
        assert revision.model_dir is not None
        service = revision.service
        replica_id = f"{revision.name}-{index}"
        revision.next_index = max(revision.next_index, index + 1)
        replica = Replica(
            replica_id,
            service.name,
            self._plan(service, revision.model_dir),
            self.backend,
            self._publishers[service.name],
            self.settings,
            self._health,
            on_ready=lambda: self._replica_ready(state, revision),
            busy=self._busy,
            revision=revision.name,
            journal=self._journal(revision) if self.state_dir is not None else None,
        )
        revision.replicas[replica_id] = replica
        return replica

    def _add_replica(self, state: ServiceState, revision: RevisionState) -> None:
        self._new_replica(state, revision, revision.next_index).start()

    def _replica_ready(self, state: ServiceState, revision: RevisionState) -> None:
        if state.cold_start_began is not None and revision is state.serving:
            took = time.monotonic() - state.cold_start_began
            state.cold_starts.append(took)
            state.cold_start_began = None
            log.info("service %s: cold start took %.1f s", state.service.name, took)
        if revision is not state.serving:
            self._wake.set()  # a newly ready replica of the latest revision may complete its rollout

    def _retire(self, name: str) -> None:
        state = self._services.pop(name)
        self._publishers.pop(name, None)
        for revision in state.revisions:
            if revision.pulling is not None:
                revision.pulling.cancel()
            for replica in revision.replicas.values():
                self._stop_later(replica, drain_s=self.settings.drain_s)
        self.registry.withdraw_service(name)

    def _stop_revision(self, state: ServiceState, revision: RevisionState) -> None:
        if revision.pulling is not None:
            revision.pulling.cancel()
        for replica in revision.replicas.values():
            self._stop_later(replica, drain_s=self.settings.drain_s)
        revision.replicas.clear()
        if revision in state.revisions:
            state.revisions.remove(revision)

    def _stop_later(self, replica: Replica, drain_s: float = 0.0) -> None:
        task = asyncio.get_running_loop().create_task(replica.stop(drain_s), name=f"stop {replica.replica_id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- state directory --------------------------------------------------------------------------------------------
    def _journal(self, revision: RevisionState) -> _Journal:
        assert self.state_dir is not None
        return _Journal(self.state_dir, revision.template)

    def _save(self) -> None:
        if self.state_dir is None:
            return
        saved = []
        for state in self._services.values():
            saved.append(
                {
                    "spec": state.service.model_dump(mode="json", by_alias=True),
                    "desired": state.desired,
                    "created": state.created,
                    "serving": state.serving.name if state.serving else None,
                    "revisions": [
                        {
                            "name": r.name,
                            "generation": r.generation,
                            "spec": r.service.model_dump(mode="json", by_alias=True),
                        }
                        for r in state.revisions
                    ],
                }
            )
        self.state_dir.save_services(saved)
        self.state_dir.save_graphs(self.graphs.saved())

    def _restore(self) -> None:
        assert self.state_dir is not None
        for saved in self.state_dir.load_services():
            try:
                service = InferenceService.model_validate(saved["spec"])
                revisions = [
                    (str(r["name"]), int(r["generation"]), InferenceService.model_validate(r["spec"]))
                    for r in saved["revisions"]
                ]
            except (KeyError, TypeError, ValueError) as exc:
                log.error("state dir: a saved service cannot be read (%s); skipped", exc)
                continue
            if service.name in self._services or not revisions:
                continue
            predictor = service.spec.predictor
            desired = max(predictor.min_replicas, min(int(saved.get("desired", 0)), predictor.replica_ceiling))
            state = ServiceState(service, desired=desired, created=int(saved.get("created") or time.time()))
            for name, generation, spec in revisions:
                state.revisions.append(RevisionState(name, generation, spec, template_of(spec)))
            state.serving = next((r for r in state.revisions if r.name == saved.get("serving")), None)
            self._services[service.name] = state
            self._publishers[service.name] = _Publisher(self, service.name)
            self._declare(state)
        if self._services:
            log.info("state dir: restored %d service(s)", len(self._services))
        self.graphs.restore(self.state_dir.load_graphs(), {n: state.service for n, state in self._services.items()})

    async def _adopt(self) -> None:
        """Take over the replicas a previous controller left running, where they still fit; stop the rest."""
        assert self.state_dir is not None
        adopted: list[Replica] = []
        for entry in self.state_dir.replicas():
            process = await self.backend.adopt(entry.replica_id, entry.handle)
            if process is None:  # gone (or not adoptable): nothing to do but forget it
                self.state_dir.forget_replica(entry.replica_id)
                continue
            found = self._revision(entry)
            reason = "its revision is gone or changed"
            if found is not None:
                state, revision = found
                await self._resolve_model_dir(state, revision)
                reason = f"its model cannot be resolved ({revision.pull_error})"
                if revision.model_dir is not None:
                    plan = self._plan(revision.service, revision.model_dir)
                    reason = "it is not healthy"
                    if await self._health(process.url + plan.health_path, self.settings.health_timeout_s):
                        replica = self._new_replica(state, revision, _index_of(entry.replica_id, revision.name))
                        replica.start(adopted=process)
                        adopted.append(replica)
                        continue
            log.info("replica %s: not adopted (%s); stopping it", entry.replica_id, reason)
            await process.stop(self.settings.stop_grace_s)
            self.state_dir.forget_replica(entry.replica_id)
        if adopted:
            # Adopted replicas are ready at their first step: publish them before gateways come asking.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(r.wait_ready() for r in adopted)), timeout=5.0)
            log.info("adopted %d running replica(s)", len(adopted))

    def _revision(self, entry: ReplicaEntry) -> tuple[ServiceState, RevisionState] | None:
        state = self._services.get(entry.service)
        if state is None:
            return None
        for revision in state.revisions:
            if revision.name == entry.revision and revision.template == entry.template:
                return state, revision
        return None

    async def _resolve_model_dir(self, state: ServiceState, revision: RevisionState) -> None:
        """An adopted replica's model is already on disk: resolve its directory (a cache hit) before serving."""
        if revision.model_dir is not None:
            return
        try:
            revision.model_dir = await asyncio.to_thread(self._pull, revision.service)
        except Exception as exc:
            revision.pull_error = str(exc)
            return
        self._declare(state)


class _Journal:
    """Writes a revision's replicas into the state directory as they start and forgets them when they end."""

    def __init__(self, state_dir: StateDir, template: str) -> None:
        self._state_dir = state_dir
        self._template = template

    def launched(self, replica: Replica, handle: dict[str, Any]) -> None:
        entry = ReplicaEntry(replica.replica_id, replica.service, replica.revision, self._template, handle)
        self._state_dir.record_replica(entry)

    def ended(self, replica: Replica) -> None:
        self._state_dir.forget_replica(replica.replica_id)


def _index_of(replica_id: str, revision: str) -> int:
    suffix = replica_id.removeprefix(f"{revision}-")
    return int(suffix) if suffix.isdigit() else 0
