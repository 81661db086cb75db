"""Revisions and canary rollout of one service, with KServe's semantics, as pure functions of (state, now).

Every change to what a predictor's replicas run (its `model` or `batcher`) creates a **revision** (name
`<service>-<generation:05d>`, generation counting from 1); changing only `canaryTrafficPercent`, scaling or routing
does not. Knative's and KServe's terms (`inference_service_status.go` PropagateStatus, the ksvc reconciler):

- **latest created**: the newest revision; **latest ready**: the newest revision that has had a ready replica;
- **latest rolled out**: the last revision that received 100 % of the traffic; **previous rolled out**: the one
  before it;
- with `canaryTrafficPercent: P` and a rolled-out revision, the latest ready revision gets P % (tag `latest`) and
  the last rolled-out one 100 - P % (tag `prev`); without P (or with none rolled out yet) the latest ready one
  gets everything. Traffic only ever targets a *ready* revision, so one that never becomes ready gets 0 %; its
  failure (the controller's reason, or no ready replica within `progress_deadline_s`) is reported, and its
  replicas are stopped;
- **promotion**: when the latest ready revision receives 100 % (P raised to 100, or removed), it becomes the
  latest rolled out and the old one the previous; **rollback**: P lowered below 100 on a rolled-out revision sends
  100 - P % back to the previous rolled-out one (P = 0: all of it), and the status reverts the latest rolled out;
- a revision that has lost all traffic keeps its replicas for `retire_after_s` (gateways with an older split,
  requests in flight, a quick rollback), then is **retired**: the controller drains and stops it. A retired
  revision that gets traffic again (a rollback) is started again.

One deliberate difference from KServe: when the rolled-out revision is also the latest ready one but a newer
revision is still starting, KServe's reconciler already splits the traffic with the *previous* rolled-out
revision (a canary of v3 moves traffic back to v1 while v3 starts); here the rolled-out revision keeps it all
until the new one is ready.

No clock and no I/O: the caller passes `now` (wall-clock seconds: the state is persisted across restarts).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from llmserve.spec import InferenceService
from llmserve.traffic import LATEST_TAG, PREV_TAG, TrafficTarget

RevisionState = Literal["starting", "ready", "failed", "retired"]


@dataclass(frozen=True)
class RolloutConfig:
    progress_deadline_s: float = 600.0  # a revision with no ready replica this long after its creation failed
    retire_after_s: float = 30.0  # how long a revision keeps its replicas after it lost its traffic
    history: int = 10  # retired revisions remembered (for `llmserve get` and rollbacks by name)


@dataclass(frozen=True)
class RevisionHealth:
    """What the controller observed of a revision's replicas this tick."""

    ready: bool  # at least one replica is ready now
    failure: str | None = None  # why it cannot become ready (pull error, crash at start, startup timeout)


@dataclass(frozen=True)
class Revision:
    name: str
    generation: int
    fingerprint: str
    created_at: float
    ready_at: float | None = None  # when it first had a ready replica (then it can receive traffic)
    failure: str | None = None  # set only while it has never been ready
    idle_since: float | None = None  # when it last lost its traffic (None: it has traffic, or never had)
    retired: bool = False

    @property
    def state(self) -> RevisionState:
        if self.failure is not None:
            return "failed"  # and stopped
        if self.retired:
            return "retired"
        return "ready" if self.ready_at is not None else "starting"


@dataclass(frozen=True)
class RolloutState:
    service: str
    revisions: tuple[Revision, ...] = ()
    canary_percent: int | None = None
    latest_rolledout: str | None = None
    previous_rolledout: str | None = None
    traffic: tuple[TrafficTarget, ...] = ()

    @property
    def latest_created(self) -> Revision | None:
        return self.revisions[-1] if self.revisions else None

    @property
    def latest_ready(self) -> Revision | None:
        return next((r for r in reversed(self.revisions) if r.ready_at is not None), None)

    def revision(self, name: str) -> Revision | None:
        return next((r for r in self.revisions if r.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["traffic"] = [t.as_dict() for t in self.traffic]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        return cls(
            service=data["service"],
            revisions=tuple(Revision(**r) for r in data.get("revisions", ())),
            canary_percent=data.get("canary_percent"),
            latest_rolledout=data.get("latest_rolledout"),
            previous_rolledout=data.get("previous_rolledout"),
            traffic=tuple(TrafficTarget.from_dict(t) for t in data.get("traffic", ())),
        )


@dataclass(frozen=True)
class RevisionStatus:
    name: str
    generation: int
    state: RevisionState
    percent: int
    reason: str | None = None


@dataclass(frozen=True)
class RolloutPlan:
    """What the controller does after a step: publish `traffic`, keep replicas for `keep`, drain and stop
    `retire` (newly retired revisions). `ready`: the latest created revision is ready; while it is not, `reason`
    says why (traffic meanwhile stays on ready revisions)."""

    traffic: tuple[TrafficTarget, ...]
    keep: frozenset[str]
    retire: frozenset[str]
    revisions: tuple[RevisionStatus, ...]
    latest_created: str | None
    latest_ready: str | None
    latest_rolledout: str | None
    previous_rolledout: str | None
    ready: bool
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For `llmserve get NAME` and the control API's status."""
        return {
            "latestCreatedRevision": self.latest_created,
            "latestReadyRevision": self.latest_ready,
            "latestRolledoutRevision": self.latest_rolledout,
            "previousRolledoutRevision": self.previous_rolledout,
            "traffic": [t.as_dict() for t in self.traffic],
            "revisions": [asdict(r) for r in self.revisions],
            "ready": self.ready,
            "reason": self.reason,
        }


def fingerprint(service: InferenceService) -> str:
    """What a predictor's replicas run: its model and batcher (a change to either is a new revision)."""
    predictor = service.spec.predictor
    served = {
        "model": predictor.model.model_dump(mode="json", by_alias=True),
        "batcher": predictor.batcher.model_dump(mode="json", by_alias=True) if predictor.batcher else None,
    }
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:16]


def revision_name(service: str, generation: int) -> str:
    return f"{service}-{generation:05d}"


def revise(state: RolloutState, service: InferenceService, now: float, config: RolloutConfig) -> RolloutState:
    """Apply a (possibly changed) declaration: a new revision if what the replicas run changed; the canary
    percentage in any case."""
    percent = service.spec.predictor.canary_traffic_percent
    state = replace(state, canary_percent=percent)
    served = fingerprint(service)
    latest = state.latest_created
    if latest is not None and latest.fingerprint == served:
        return state
    generation = latest.generation + 1 if latest is not None else 1
    revision = Revision(revision_name(state.service, generation), generation, served, created_at=now)
    return _pruned(replace(state, revisions=(*state.revisions, revision)), config.history)


def _pruned(state: RolloutState, history: int) -> RolloutState:
    """Forget the oldest retired revisions beyond `history` (never a rolled-out one: a rollback needs it)."""
    remembered = {state.latest_rolledout, state.previous_rolledout}
    retired = [r.name for r in state.revisions if r.retired and r.name not in remembered]
    forget = set(retired[: max(0, len(retired) - history)])
    return replace(state, revisions=tuple(r for r in state.revisions if r.name not in forget))


def step(
    state: RolloutState, health: Mapping[str, RevisionHealth], now: float, config: RolloutConfig
) -> tuple[RolloutPlan, RolloutState]:
    """One reconcile tick: readiness in, traffic split and which revisions keep replicas out."""
    revisions = tuple(_observe(r, health.get(r.name), now, config) for r in state.revisions)
    state = replace(state, revisions=revisions)
    traffic = _traffic(state)
    state = _propagate(state, traffic)
    state, keep, retire = _retirements(replace(state, traffic=traffic), now, config)
    return _plan(state, keep, retire), state


def _observe(revision: Revision, health: RevisionHealth | None, now: float, config: RolloutConfig) -> Revision:
    if revision.retired:
        return revision
    if health is not None and health.ready:
        if revision.ready_at is None:
            return replace(revision, ready_at=now, failure=None)
        return revision
    if revision.ready_at is not None:
        return revision  # once ready, a crash is the supervisor's business (restarts), not the rollout's
    if health is not None and health.failure:
        return replace(revision, failure=health.failure)
    if revision.failure is None and now - revision.created_at >= config.progress_deadline_s:
        return replace(revision, failure=f"no ready replica within {config.progress_deadline_s:g} s")
    return revision


def _traffic(state: RolloutState) -> tuple[TrafficTarget, ...]:
    """KServe's traffic targets (ksvc reconciler), on the latest *ready* revision."""
    created = state.latest_created
    ready = state.latest_ready
    if created is None:
        return ()
    if ready is None:  # nothing has been ready yet: the first revision is the target (requests wait for it)
        return (TrafficTarget(created.name, 100, LATEST_TAG),) if created.failure is None else ()
    percent = state.canary_percent
    rolled = state.latest_rolledout
    if rolled == ready.name and percent is not None and percent < 100 and created.name == ready.name:
        rolled = state.previous_rolledout  # a rolled-out revision taken below 100 %: the rest goes back
    if percent is None or rolled is None:
        return (TrafficTarget(ready.name, 100, LATEST_TAG),)
    targets = [TrafficTarget(ready.name, percent, LATEST_TAG)]
    if percent < 100:
        targets.append(TrafficTarget(rolled, 100 - percent, PREV_TAG))
    return tuple(targets)


def _propagate(state: RolloutState, traffic: tuple[TrafficTarget, ...]) -> RolloutState:
    """KServe's PropagateStatus: promotion at 100 %, and the rolled-out revision reverted on a rollback."""
    ready = state.latest_ready
    latest = next((t for t in traffic if t.tag == LATEST_TAG), None)
    if ready is None or latest is None or latest.revision != ready.name:
        return state
    if state.latest_rolledout != ready.name:
        if latest.percent == 100:
            return replace(state, previous_rolledout=state.latest_rolledout, latest_rolledout=ready.name)
        return state
    created = state.latest_created
    if latest.percent < 100 and created is not None and created.name == ready.name and state.previous_rolledout:
        return replace(state, latest_rolledout=state.previous_rolledout)
    return state


def _retirements(
    state: RolloutState, now: float, config: RolloutConfig
) -> tuple[RolloutState, frozenset[str], frozenset[str]]:
    serving = {t.revision for t in state.traffic if t.percent > 0}
    ready = state.latest_ready
    created = state.latest_created
    pinned = set(serving)
    if ready is not None:
        pinned.add(ready.name)  # a canary held at 0 % keeps its replicas (KServe's pinned canary)
    if created is not None and created.failure is None:
        pinned.add(created.name)  # starting: it must get its replicas to become ready
    keep: set[str] = set()
    retire: set[str] = set()
    revisions = []
    for revision in state.revisions:
        if revision.name in pinned:
            revision = replace(revision, idle_since=None, retired=False)
            keep.add(revision.name)
        elif not revision.retired:
            idle_since = revision.idle_since if revision.idle_since is not None else now
            if revision.ready_at is None or now - idle_since >= config.retire_after_s:
                revision = replace(revision, idle_since=idle_since, retired=True)
                retire.add(revision.name)
            else:
                revision = replace(revision, idle_since=idle_since)
                keep.add(revision.name)
        revisions.append(revision)
    state = _pruned(replace(state, revisions=tuple(revisions)), config.history)
    return state, frozenset(keep), frozenset(retire)


def _plan(state: RolloutState, keep: frozenset[str], retire: frozenset[str]) -> RolloutPlan:
    shares: dict[str, int] = {}
    for target in state.traffic:
        shares[target.revision] = shares.get(target.revision, 0) + target.percent
    statuses = tuple(
        RevisionStatus(r.name, r.generation, r.state, shares.get(r.name, 0), r.failure) for r in state.revisions
    )
    created = state.latest_created
    ready = state.latest_ready
    reason: str | None = None
    if created is None:
        reason = "no revision declared"
    elif created.failure is not None:
        reason = f"revision {created.name} failed: {created.failure}"
    elif ready is None or ready.name != created.name:
        reason = f"revision {created.name} is not ready yet"
    return RolloutPlan(
        traffic=state.traffic,
        keep=keep,
        retire=retire,
        revisions=statuses,
        latest_created=created.name if created else None,
        latest_ready=ready.name if ready else None,
        latest_rolledout=state.latest_rolledout,
        previous_rolledout=state.previous_rolledout,
        ready=reason is None,
        reason=reason,
    )


class Rollout:
    """One service's rollout state and the clock it is stepped with: what the controller holds per service
    (persist `state.as_dict()`, restore with `RolloutState.from_dict`)."""

    def __init__(
        self,
        service: str,
        config: RolloutConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        state: RolloutState | None = None,
    ) -> None:
        self.config = config or RolloutConfig()
        self.clock = clock
        self.state = state or RolloutState(service)

    def apply(self, service: InferenceService) -> Revision:
        """Declare the service's current spec; returns its latest revision (new if the predictor changed)."""
        self.state = revise(self.state, service, self.clock(), self.config)
        latest = self.state.latest_created
        assert latest is not None
        return latest

    def step(self, health: Mapping[str, RevisionHealth]) -> RolloutPlan:
        plan, self.state = step(self.state, health, self.clock(), self.config)
        return plan
