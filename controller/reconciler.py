"""The controller: declared InferenceServices in, supervised replicas out.

`apply()` creates or changes services (gateways can list a new one at once), `delete()` removes one. Each
service has revisions: a change to what its workers run (the predictor's model, runtime, args, env, resources,
batcher) is a new revision; other changes (replica bounds, autoscaling, routing) apply in place. A reconcile loop
pulls each revision's model once (in a thread: pulls print progress and may convert weights) and keeps the number of
replicas at the desired count, which is `minReplicas` until an autoscaler sets it with `set_desired()`.

Rollout, with KServe's semantics (controller/rollout.py, one `Rollout` per service, persisted with it): a new
revision starts with as many replicas as the serving one has (at least one) and takes traffic once that many are
ready: all of it, or `canaryTrafficPercent` of it (the rest stays with the last rolled-out revision, tag `prev`);
100 % (or no percentage) promotes it, 0 % rolls back. A revision that cannot start while another one serves
(a failed pull, replicas that keep failing) fails: it gets no traffic, and status says why. Gateways get the split
with the service (`ServiceInfo.traffic`) and the ready replicas of every revision in it; a revision that lost its
traffic keeps its replicas for `revision_retire_after_s`, then they are drained and stopped (a rollback starts it
again). Each revision that serves has its own desired replica count, which the autoscaler sets from that
revision's share of the demand. A service's transformer replicas (controller/transformers.py) are supervised next
to its revisions.

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
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.backends import Backend, ReplicaProcess
from controller.graphs import GraphCatalog, GraphWriter
from controller.replica import BusyProbe, HealthCheck, Replica
from controller.rollout import Revision as RolloutRevision
from controller.rollout import (
    RevisionHealth,
    RevisionStatus,
    Rollout,
    RolloutConfig,
    RolloutPlan,
    RolloutState,
    fingerprint,
)
from controller.settings import ControllerSettings
from controller.statedir import ReplicaEntry, StateDir
from controller.transformers import TRANSFORMER, TransformerPublisher, TransformerSet, transformer_template
from controller.transformers import replica_id as transformer_replica_id
from llmserve import storage
from llmserve.endpoints import Endpoint, EndpointWriter, ServiceInfo
from llmserve.payload_policy import log_policy
from llmserve.protocol.vllm_metrics import parse_vllm_metrics
from llmserve.spec import InferenceGraph, InferenceService, SpecError
from llmserve.spec.models import parse_quantity
from llmserve.traffic import LATEST_TAG, TrafficTarget, percent_by_revision
from llmserve.workers import WorkerPlan
from llmserve.workers.retriever import retriever_plan
from llmserve.workers.sim.plan import sim_plan
from llmserve.workers.tracing import WorkerTracing
from llmserve.workers.transformer import transformer_plan
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
    desired: int = 0  # replicas wanted while it keeps replicas (the autoscaler's, per revision)
    initial: int = 1  # replicas it starts with; that many ready make it ready for traffic
    pull_failures: int = 0

    def ready_count(self) -> int:
        return sum(r.ready for r in self.replicas.values())

    def start_failure(self, restarts: int) -> str | None:
        """Why it cannot start: a failed pull, or a replica that failed `restarts` times without being ready."""
        if self.pull_error is not None and self.pull_failures > 0:
            return f"model pull failed: {self.pull_error}"
        for replica in self.replicas.values():
            record = replica.record
            if not replica.ready and record.restarts >= restarts and record.last_exit:
                return f"replica {replica.replica_id} {record.last_exit} ({record.restarts} restarts)"
        return None

    def as_dict(self, traffic: int, status: RevisionStatus | None = None) -> dict[str, Any]:
        failures = [r.record.last_exit for r in self.replicas.values() if r.record.last_exit and not r.ready]
        return {
            "name": self.name,
            "generation": self.generation,
            "template": self.template,
            "state": status.state if status is not None else "starting",
            "traffic_percent": traffic,
            "desired_replicas": self.desired,
            "ready_replicas": self.ready_count(),
            "replicas": len(self.replicas),
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "pull_error": self.pull_error,
            "failure": (status.reason if status is not None else None)
            or self.pull_error
            or (failures[-1] if failures else None),
            "created": self.created,
        }


@dataclass
class ServiceState:
    service: InferenceService  # the latest applied spec
    rollout: Rollout  # revisions and the traffic split (controller/rollout.py), persisted with the service
    revisions: list[RevisionState] = field(default_factory=list)  # oldest first; the last is the latest
    plan: RolloutPlan | None = None  # the rollout's last step: traffic, revisions that keep replicas
    transformer: TransformerSet | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    cold_start_began: float | None = None  # set when scaling up from zero; cleared by the first ready replica
    cold_starts: list[float] = field(default_factory=list)  # durations, seconds

    @property
    def latest(self) -> RevisionState:
        return self.revisions[-1]

    @property
    def traffic(self) -> tuple[TrafficTarget, ...]:
        return self.plan.traffic if self.plan is not None else ()

    @property
    def serving(self) -> RevisionState | None:
        """The revision with the largest share of the traffic (the latest ready one on a tie), if any."""
        shares = percent_by_revision(self.traffic)
        if not shares:
            return None
        best = max(shares.values())
        for revision in reversed(self.revisions):
            if shares.get(revision.name) == best:
                return revision
        return None

    def revision(self, name: str) -> RevisionState | None:
        return next((r for r in self.revisions if r.name == name), None)

    def kept(self) -> list[RevisionState]:
        """The revisions that keep replicas (before the first step: the latest)."""
        if self.plan is None:
            return [self.latest]
        return [r for r in self.revisions if r.name in self.plan.keep]

    @property
    def desired(self) -> int:
        return sum(r.desired for r in self.kept())

    @property
    def model_dir(self) -> Path | None:
        revision = self.serving or self.latest
        return revision.model_dir

    def replicas(self) -> list[Replica]:
        return [r for revision in self.revisions for r in revision.replicas.values()]

    def supervised(self) -> list[Replica]:
        """Every replica of the service: its revisions' and its transformer's."""
        transformers = list(self.transformer.replicas.values()) if self.transformer is not None else []
        return [*self.replicas(), *transformers]

    def ready_count(self) -> int:
        """Ready replicas of the revisions that take traffic."""
        shares = percent_by_revision(self.traffic)
        return sum(r.ready_count() for r in self.revisions if shares.get(r.name, 0) > 0)

    def as_dict(self) -> dict[str, Any]:
        predictor = self.service.spec.predictor
        latest = self.latest
        serving = self.serving
        shares = percent_by_revision(self.traffic)
        statuses = {s.name: s for s in self.plan.revisions} if self.plan is not None else {}
        rollout = self.plan.as_dict() if self.plan is not None else {}
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
            "serving_revision": serving.name if serving else None,
            "latest_revision": latest.name,
            "canary_traffic_percent": predictor.canary_traffic_percent,
            # KServe's names (status.components.predictor of an InferenceService)
            "components": {"predictor": kserve_component_status(rollout, self.traffic)},
            "ready": rollout.get("ready", False),
            "reason": rollout.get("reason"),
            "traffic": [t.as_dict() for t in self.traffic],
            "revisions": [r.as_dict(shares.get(r.name, 0), statuses.get(r.name)) for r in self.revisions],
            "replicas": [r.record.as_dict() for r in self.replicas()],
            "transformer": self.transformer.as_dict(self.desired) if self.transformer is not None else None,
        }


def kserve_component_status(rollout: dict[str, Any], traffic: tuple[TrafficTarget, ...]) -> dict[str, Any]:
    """A component's rollout in KServe's status fields (Knative's traffic targets)."""
    return {
        "latestCreatedRevision": rollout.get("latestCreatedRevision"),
        "latestReadyRevision": rollout.get("latestReadyRevision"),
        "latestRolledoutRevision": rollout.get("latestRolledoutRevision"),
        "previousRolledoutRevision": rollout.get("previousRolledoutRevision"),
        "traffic": [
            {"tag": t.tag, "revisionName": t.revision, "percent": t.percent, "latestRevision": t.tag == LATEST_TAG}
            for t in traffic
        ],
    }


class _Publisher:
    """A service's view for gateways: the ready replicas of the revisions in its traffic split (a 0 % entry
    included: tag routing reaches it), and its transformer replicas."""

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

    def refresh(self, also: Iterable[str] = ()) -> None:
        """Publish the endpoints gateways should see now; `also`: revisions that stay visible a moment longer
        (those a change of the split is taking traffic away from, until gateways have the new split)."""
        state = self._controller._services.get(self._name)
        if state is None:
            return
        visible = {t.revision for t in state.traffic} | set(also)
        endpoints = tuple(e for e in self._ready.values() if e.component == TRANSFORMER or e.revision in visible)
        self._controller.registry.set_endpoints(self._name, endpoints)


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
        self._clock: Callable[[], float] = time.time  # the rollout's (wall clock: its state is persisted)
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
        if state is None:
            rollout = Rollout(name, self._rollout_config(), clock=self._clock)
            state = self._services[name] = ServiceState(service, rollout)
            self._publishers[name] = _Publisher(self, name)
            self._revise(state, service)
            self._declare(state)
            return f"{name}: created (revision {state.latest.name})"
        if state.service == service:
            return f"{name}: unchanged"
        state.service = service
        for revision in state.kept():
            revision.desired = self._clamp(state, revision.desired)
        if self._revise(state, service):
            self._declare(state)
            return f"{name}: changed (new revision {state.latest.name}; the current one serves until it is ready)"
        state.latest.service = service
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

    def _revise(self, state: ServiceState, service: InferenceService) -> bool:
        """Declare `service` to the rollout (its canary percentage, maybe a new revision) and update the
        transformer's replica set; whether a new revision was created."""
        self._update_transformer(state, service)
        latest = state.rollout.apply(service)
        if state.revisions and latest.name == state.latest.name:
            return False
        initial = self._clamp(state, state.service.spec.predictor.min_replicas)
        serving = state.serving
        if serving is not None:  # a change of a service that serves: start as many as serve now, at least one
            initial = self._clamp(state, max(1, serving.desired, serving.ready_count()))
        revision = RevisionState(latest.name, latest.generation, service, template_of(service))
        revision.desired = revision.initial = initial
        state.revisions.append(revision)
        return True

    def _update_transformer(self, state: ServiceState, service: InferenceService) -> None:
        spec = service.spec.transformer
        current = state.transformer
        if spec is None:
            if current is not None:
                self._stop_transformers(current)
                state.transformer = None
            return
        template = transformer_template(spec)
        if current is not None and current.template == template:
            current.service = service  # scaling bounds change in place
            return
        if current is not None:
            self._stop_transformers(current)  # a changed transformer: its replicas are replaced
        state.transformer = TransformerSet(service, template)

    def _stop_transformers(self, transformers: TransformerSet) -> None:
        for replica in transformers.replicas.values():
            self._stop_later(replica, drain_s=self.settings.drain_s)
        transformers.replicas.clear()

    def _rollout_config(self) -> RolloutConfig:
        settings = self.settings
        return RolloutConfig(
            progress_deadline_s=math.inf,  # the controller reports start failures itself (see _health)
            retire_after_s=settings.revision_retire_after_s,
            history=settings.revision_history,
        )

    def _clamp(self, state: ServiceState, replicas: int) -> int:
        predictor = state.service.spec.predictor
        return max(predictor.min_replicas, min(replicas, predictor.replica_ceiling))

    def _declare(self, state: ServiceState) -> None:
        service = state.service
        predictor = service.spec.predictor
        model_dir = state.model_dir
        serving = state.serving
        transformer = service.spec.transformer
        self.registry.declare_service(
            ServiceInfo(
                name=service.name,
                model_name=service.served_model_name,
                protocol=service.protocol,
                min_replicas=predictor.min_replicas,
                created=state.created,
                routing_profile=predictor.routing.profile,
                max_requests_per_replica=predictor.routing.max_requests_per_replica,
                max_tokens_per_replica=predictor.routing.max_tokens_per_replica,
                tokenizer_dir=str(model_dir) if model_dir else None,
                revision=serving.name if serving else "",
                traffic=state.traffic,
                transformer_timeout_s=transformer.timeout_s if transformer is not None else None,
                logger=log_policy(service),
            )
        )

    def set_desired(self, name: str, replicas: int, revision: str | None = None) -> int:
        """Ask for `replicas` of a service's revision (default: the one serving most of its traffic), clamped to
        the service's min/max; returns what was set."""
        state = self._services[name]
        target = state.revision(revision) if revision else (state.serving or state.latest)
        if target is None:
            return 0
        desired = self._clamp(state, replicas)
        if state.desired == 0 and desired > 0 and state.ready_count() == 0:
            state.cold_start_began = time.monotonic()
        target.desired = desired
        self._wake.set()
        return desired

    def set_transformer_desired(self, name: str, replicas: int) -> int:
        """Ask for `replicas` of a service's transformer (clamped to its min/max)."""
        transformers = self._services[name].transformer
        if transformers is None:
            return 0
        transformers.desired = transformers.clamp(replicas)
        self._wake.set()
        return transformers.desired

    def wake(self, name: str) -> bool:
        """A request waits for `name`: every revision that takes traffic and has no replica wanted gets one;
        whether anything changed."""
        state = self._services.get(name)
        if state is None:
            return False
        shares = percent_by_revision(state.traffic)
        waiting = [r for r in state.kept() if shares.get(r.name, 100 if r is state.latest else 0) > 0]
        woken = [r for r in waiting if r.desired == 0]
        for revision in woken:
            self.set_desired(name, 1, revision.name)
        return bool(woken)

    def suspect(self, service: str, replica_id: str) -> bool:
        """A gateway could not use a replica: check it now (it is replaced if its health check fails)."""
        state = self._services.get(service)
        replicas = state.supervised() if state is not None else []
        replica = next((r for r in replicas if r.replica_id == replica_id), None)
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

    def desired(self, name: str, revision: str | None = None) -> int:
        """Replicas wanted for a service (all its revisions), or for one revision."""
        state = self._services[name]
        if revision is None:
            return state.desired
        found = state.revision(revision)
        return found.desired if found is not None else 0

    def ready_count(self, name: str, revision: str | None = None) -> int:
        """Ready replicas of the revisions that take a service's traffic, or of one revision."""
        state = self._services.get(name)
        if state is None:
            return 0
        if revision is None:
            return state.ready_count()
        found = state.revision(revision)
        return found.ready_count() if found is not None else 0

    def scaled_revisions(self, name: str) -> list[str]:
        """The revisions the autoscaler scales: those that keep replicas and take traffic or have been ready (a
        new revision starting next to a serving one keeps its initial replicas until it is ready)."""
        state = self._services.get(name)
        if state is None:
            return []
        scaled = {r.name for r in state.rollout.state.revisions if r.ready_at is not None}
        scaled.update(name for name, percent in percent_by_revision(state.traffic).items() if percent > 0)
        return [r.name for r in state.kept() if r.name in scaled]

    def primary_revision(self, name: str) -> str | None:
        """The revision serving most of a service's traffic."""
        state = self._services.get(name)
        serving = state.serving if state is not None else None
        return serving.name if serving is not None else None

    def transformer_ready(self, name: str) -> int:
        state = self._services.get(name)
        return state.transformer.ready_count() if state is not None and state.transformer is not None else 0

    def transformer_desired(self, name: str) -> int | None:
        """What the autoscaler last asked of a service's transformer; None: it has none."""
        state = self._services.get(name)
        return state.transformer.desired if state is not None and state.transformer is not None else None

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
        """Stop every replica (no orphans), each drained first (settings.drain_s), and the loop; with
        `keep_workers`, leave the replicas running for the next controller to adopt (their leases run out if none
        does)."""
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
            for replica in state.supervised():
                stops.append(replica.detach() if keep_workers else replica.stop(self.settings.drain_s))
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
            kept = {r.name for r in state.kept()}
            for revision in list(state.revisions):
                target = revision.desired if revision.name in kept else 0
                if revision.model_dir is None:
                    if target > 0 or (revision is state.latest and revision.name in kept):
                        self._ensure_pulling(state, revision)
                    continue
                self._scale(state, revision, target)
            if state.transformer is not None:
                self._scale_transformers(state, state.transformer)

    def _roll_out(self, state: ServiceState) -> None:
        """One step of the service's rollout (controller/rollout.py): readiness and start failures in; the
        traffic split (published to gateways), which revisions keep replicas, and retirements out."""
        name = state.service.name
        rolled = state.rollout.state.latest_rolledout
        restarts = self.settings.revision_failure_restarts
        health = {}
        for revision in state.revisions:
            ready = revision.ready_count() >= max(1, min(revision.initial, revision.desired))
            # Only a revision that would take traffic from a rolled-out one fails for good; a service's first
            # revision keeps trying (its failures show in status all the same).
            failure = revision.start_failure(restarts) if rolled is not None and rolled != revision.name else None
            health[revision.name] = RevisionHealth(ready=ready, failure=failure)
        before, remembered = state.plan, state.rollout.state
        plan = state.plan = state.rollout.step(health)
        kept_before = before.keep if before is not None else frozenset(r.name for r in state.revisions)
        for revision in state.revisions:
            if revision.name not in plan.keep:
                revision.desired = 0
            elif revision.name not in kept_before:  # traffic again after its retirement (a rollback)
                revision.desired = self._clamp(state, max(1, revision.desired))
        for retired in plan.retire:
            log.info("service %s: revision %s has no traffic: its replicas are drained and stopped", name, retired)
        known = {r.name for r in state.rollout.state.revisions}
        for revision in [r for r in state.revisions if r.name not in known]:
            self._stop_revision(state, revision)  # forgotten by the rollout (older than its history)
        previous = before.traffic if before is not None else ()
        if plan.traffic != previous:
            publisher = self._publishers[name]
            losing = {t.revision for t in previous} - {t.revision for t in plan.traffic}
            publisher.refresh(also=losing)  # revisions gaining traffic are visible before the split names them
            self._declare(state)
            publisher.refresh()  # and those losing it go once the split no longer does
            split = ", ".join(f"{t.revision} {t.percent}%" + (f" ({t.tag})" if t.tag else "") for t in plan.traffic)
            log.info("service %s: traffic %s", name, split or "none")
        if plan.traffic != previous or state.rollout.state != remembered:
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
                revision.pull_failures += 1
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
        self._wake.set()  # a newly ready replica may make its revision ready for traffic

    def _scale_transformers(self, state: ServiceState, transformers: TransformerSet) -> None:
        replicas = transformers.replicas
        target = transformers.target(state.desired)
        while len(replicas) < target:
            self._new_transformer(state, transformers, transformers.next_index).start()
        excess = len(replicas) - target
        if excess > 0:
            order = sorted(replicas.values(), key=lambda r: (r.ready, r.record.started_at or 0.0))
            for replica in order[:excess]:
                del replicas[replica.replica_id]
                self._stop_later(replica, drain_s=self.settings.drain_s)

    def _new_transformer(self, state: ServiceState, transformers: TransformerSet, index: int) -> Replica:
        service = transformers.service
        replica_id = transformer_replica_id(service.name, index)
        transformers.next_index = max(transformers.next_index, index + 1)
        replica = Replica(
            replica_id,
            service.name,
            transformer_plan(service, python=self.settings.python),
            self.backend,
            TransformerPublisher(self._publishers[service.name]),
            self.settings,
            self._health,
            revision=TRANSFORMER,
            journal=_Journal(self.state_dir, transformers.template) if self.state_dir is not None else None,
        )
        transformers.replicas[replica_id] = replica
        return replica

    def _retire(self, name: str) -> None:
        state = self._services.pop(name)
        self._publishers.pop(name, None)
        for revision in state.revisions:
            if revision.pulling is not None:
                revision.pulling.cancel()
            for replica in revision.replicas.values():
                self._stop_later(replica, drain_s=self.settings.drain_s)
        if state.transformer is not None:
            self._stop_transformers(state.transformer)
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
                    "created": state.created,
                    "rollout": state.rollout.state.as_dict(),
                    "transformer_desired": state.transformer.desired if state.transformer is not None else 0,
                    "revisions": [
                        {
                            "name": r.name,
                            "generation": r.generation,
                            "spec": r.service.model_dump(mode="json", by_alias=True),
                            "desired": r.desired,
                            "initial": r.initial,
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
                state = self._restored(saved)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("state dir: a saved service cannot be read (%s); skipped", exc)
                continue
            if state is None or state.service.name in self._services:
                continue
            name = state.service.name
            self._services[name] = state
            self._publishers[name] = _Publisher(self, name)
            state.plan = state.rollout.step({})  # the split it had, before any replica is seen again
            self._declare(state)
        if self._services:
            log.info("state dir: restored %d service(s)", len(self._services))
        self.graphs.restore(self.state_dir.load_graphs(), {n: state.service for n, state in self._services.items()})

    def _restored(self, saved: dict[str, Any]) -> ServiceState | None:
        service = InferenceService.model_validate(saved["spec"])
        revisions = [(dict(r), InferenceService.model_validate(r["spec"])) for r in saved["revisions"]]
        if not revisions:
            return None
        name = service.name
        if "rollout" in saved:
            rollout_state = RolloutState.from_dict(saved["rollout"])
        else:  # written before revisions had a rollout: the serving revision is the rolled-out one
            now = self._clock()
            serving = saved.get("serving")
            rollout_state = RolloutState(
                name,
                tuple(
                    RolloutRevision(
                        str(r["name"]),
                        int(r["generation"]),
                        fingerprint(spec),
                        now,
                        now if r["name"] == serving else None,
                    )
                    for r, spec in revisions
                ),
                service.spec.predictor.canary_traffic_percent,
                latest_rolledout=serving,
            )
        rollout = Rollout(name, self._rollout_config(), clock=self._clock, state=rollout_state)
        state = ServiceState(service, rollout, created=int(saved.get("created") or time.time()))
        legacy_desired = int(saved.get("desired", 0))
        for raw, spec in revisions:
            revision = RevisionState(str(raw["name"]), int(raw["generation"]), spec, template_of(spec))
            revision.desired = self._clamp(state, int(raw.get("desired", legacy_desired)))
            revision.initial = max(1, int(raw.get("initial", 1)))
            state.revisions.append(revision)
        self._update_transformer(state, service)
        if state.transformer is not None:
            state.transformer.desired = state.transformer.clamp(int(saved.get("transformer_desired", 0)))
        return state

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
            if entry.revision == TRANSFORMER:
                replica = await self._adopt_transformer(entry, process)
                if replica is not None:
                    adopted.append(replica)
                    continue
                reason = "its transformer is gone, changed or not healthy"
            elif found is not None:
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

    async def _adopt_transformer(self, entry: ReplicaEntry, process: ReplicaProcess) -> Replica | None:
        state = self._services.get(entry.service)
        transformers = state.transformer if state is not None else None
        if state is None or transformers is None or transformers.template != entry.template:
            return None
        plan = transformer_plan(transformers.service, python=self.settings.python)
        if not await self._health(process.url + plan.health_path, self.settings.health_timeout_s):
            return None
        index = _index_of(entry.replica_id, f"{entry.service}-{TRANSFORMER}")
        replica = self._new_transformer(state, transformers, index)
        replica.start(adopted=process)
        return replica

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
