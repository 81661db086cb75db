"""Revisions and canary rollout over scripted sequences, time passed in (no clock, no sleeps): apply v1, v2 with
P = 20, a v2 that never becomes ready, promotion, rollback, retirement of revisions that lost their traffic."""

from __future__ import annotations

import json

import pytest

from controller.rollout import (
    RevisionHealth,
    Rollout,
    RolloutConfig,
    RolloutPlan,
    RolloutState,
    fingerprint,
)
from llmserve.spec import InferenceService, parse_services
from llmserve.traffic import LATEST_TAG, PREV_TAG, TrafficTarget, percent_by_revision

CONFIG = RolloutConfig(progress_deadline_s=300, retire_after_s=30, history=3)


def service(version: str, percent: int | None = None, **predictor: object) -> InferenceService:
    extra = "".join(f"    {key}: {value}\n" for key, value in predictor.items())
    canary = f"    canaryTrafficPercent: {percent}\n" if percent is not None else ""
    (parsed,) = parse_services(
        f"""
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  predictor:
{canary}{extra}    model:
      modelFormat: {{name: huggingface}}
      storageUri: file:///models/chat-{version}
"""
    )
    return parsed


class Script:
    """A rollout driven by hand: `apply` declares a spec, `tick` advances time and reports which revisions have a
    ready replica (or a failure)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.rollout = Rollout("chat", CONFIG, clock=lambda: self.now)
        self.ready: set[str] = set()
        self.failures: dict[str, str] = {}

    def apply(self, spec: InferenceService) -> str:
        return self.rollout.apply(spec).name

    def tick(self, seconds: float = 1.0) -> RolloutPlan:
        self.now += seconds
        health = {name: RevisionHealth(ready=True) for name in self.ready}
        health.update({name: RevisionHealth(ready=False, failure=why) for name, why in self.failures.items()})
        return self.rollout.step(health)


def split(plan: RolloutPlan) -> dict[str, int]:
    return {name: share for name, share in percent_by_revision(plan.traffic).items() if share}


def test_first_revision_gets_everything_and_is_rolled_out_once_ready() -> None:
    script = Script()
    v1 = script.apply(service("a"))
    assert v1 == "chat-00001"
    plan = script.tick()
    assert split(plan) == {v1: 100}  # the target while it starts: requests wait for it
    assert plan.keep == {v1}
    assert (plan.ready, plan.reason) == (False, "revision chat-00001 is not ready yet")
    assert plan.latest_rolledout is None
    script.ready.add(v1)
    plan = script.tick()
    assert (plan.latest_ready, plan.latest_rolledout, plan.ready) == (v1, v1, True)
    assert plan.traffic == (TrafficTarget(v1, 100, LATEST_TAG),)


def test_only_predictor_changes_make_revisions() -> None:
    script = Script()
    v1 = script.apply(service("a"))
    assert script.apply(service("a", percent=20)) == v1  # the canary percentage alone is not a revision
    assert script.apply(service("a", minReplicas=3, maxReplicas=4)) == v1  # neither is scaling
    assert script.apply(service("b", percent=20)) == "chat-00002"
    assert fingerprint(service("a")) != fingerprint(service("b"))


def rolled_out_v1_then_canary_v2(percent: int = 20) -> tuple[Script, str, str]:
    script = Script()
    v1 = script.apply(service("a"))
    script.ready.add(v1)
    script.tick()
    v2 = script.apply(service("b", percent=percent))
    return script, v1, v2


def test_canary_splits_only_once_the_new_revision_is_ready() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    plan = script.tick()
    assert split(plan) == {v1: 100}  # v2 is starting: no traffic yet
    assert plan.keep == {v1, v2}
    assert plan.reason == f"revision {v2} is not ready yet"
    script.ready.add(v2)
    plan = script.tick()
    assert plan.traffic == (TrafficTarget(v2, 20, LATEST_TAG), TrafficTarget(v1, 80, PREV_TAG))
    assert (plan.latest_ready, plan.latest_rolledout, plan.ready) == (v2, v1, True)
    assert plan.keep == {v1, v2}
    assert plan.retire == frozenset()


def test_a_revision_that_never_becomes_ready_gets_nothing_and_says_why() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    plan = script.tick(CONFIG.progress_deadline_s - 2)
    assert split(plan) == {v1: 100}
    assert v2 in plan.keep  # still starting
    plan = script.tick(2)
    assert split(plan) == {v1: 100}
    assert plan.reason == f"revision {v2} failed: no ready replica within 300 s"
    assert plan.retire == {v2}  # its replicas are stopped
    assert plan.keep == {v1}
    (status,) = [r for r in plan.revisions if r.name == v2]
    assert (status.state, status.percent) == ("failed", 0)
    assert plan.latest_rolledout == v1


def test_a_failure_reported_by_the_controller_fails_the_revision_at_once() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(50)
    script.failures[v2] = "pull failed: file:///models/chat-b does not exist"
    plan = script.tick()
    assert split(plan) == {v1: 100}
    assert plan.reason == f"revision {v2} failed: pull failed: file:///models/chat-b does not exist"
    assert plan.retire == {v2}


def test_raising_to_100_promotes_and_the_old_revision_is_retired_after_the_grace() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    script.ready.add(v2)
    script.tick()
    script.apply(service("b", percent=100))
    plan = script.tick()
    assert split(plan) == {v2: 100}
    assert (plan.latest_rolledout, plan.previous_rolledout) == (v2, v1)
    assert plan.keep == {v1, v2}  # v1 lost its traffic just now: it keeps its replicas for the grace
    plan = script.tick(CONFIG.retire_after_s - 1)
    assert v1 in plan.keep
    assert plan.retire == frozenset()
    plan = script.tick(1)
    assert plan.retire == {v1}
    assert plan.keep == {v2}
    script.ready.discard(v1)
    plan = script.tick()
    assert plan.retire == frozenset()  # retired once
    assert {r.name: r.state for r in plan.revisions} == {v1: "retired", v2: "ready"}


def test_removing_the_percentage_promotes_too() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    script.ready.add(v2)
    script.tick()
    script.apply(service("b"))
    plan = script.tick()
    assert split(plan) == {v2: 100}
    assert (plan.latest_rolledout, plan.previous_rolledout) == (v2, v1)


def test_zero_rolls_a_canary_back() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    script.ready.add(v2)
    script.tick()
    script.apply(service("b", percent=0))
    plan = script.tick()
    assert split(plan) == {v1: 100}
    assert plan.traffic == (TrafficTarget(v2, 0, LATEST_TAG), TrafficTarget(v1, 100, PREV_TAG))
    assert plan.keep == {v1, v2}  # a canary pinned at 0 % keeps its replicas (tag routing still reaches it)
    assert plan.latest_rolledout == v1


def test_zero_after_promotion_rolls_back_to_the_previous_revision() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(100)
    script.ready.add(v2)
    plan = script.tick()
    assert (split(plan), plan.latest_rolledout, plan.previous_rolledout) == ({v2: 100}, v2, v1)
    script.apply(service("b", percent=0))
    plan = script.tick()
    assert split(plan) == {v1: 100}
    assert plan.latest_rolledout == v1  # the status reverts, as KServe's PropagateStatus does
    for _ in range(3):  # and stays put
        plan = script.tick(CONFIG.retire_after_s)
        assert split(plan) == {v1: 100}
        assert plan.keep == {v1, v2}
    script.apply(service("b", percent=100))  # promote again
    plan = script.tick()
    assert (split(plan), plan.latest_rolledout, plan.previous_rolledout) == ({v2: 100}, v2, v1)


def test_rollback_to_a_retired_revision_starts_it_again() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(100)
    script.ready.add(v2)
    script.tick()
    plan = script.tick(CONFIG.retire_after_s)
    assert plan.retire == {v1}
    script.ready.discard(v1)
    script.apply(service("b", percent=0))
    plan = script.tick()
    assert split(plan) == {v1: 100}
    assert plan.keep == {v1, v2}  # v1 is wanted again: the controller starts its replicas
    assert {r.name: r.state for r in plan.revisions}[v1] == "ready"


def test_a_newer_canary_starting_does_not_move_traffic_back() -> None:
    """KServe would split a rolled-out v2 with v1 while v3 starts; here v2 keeps everything until v3 is ready."""
    script, _, v2 = rolled_out_v1_then_canary_v2(100)
    script.ready.add(v2)
    script.tick()
    v3 = script.apply(service("c", percent=20))
    plan = script.tick()
    assert split(plan) == {v2: 100}
    script.ready.add(v3)
    plan = script.tick()
    assert plan.traffic == (TrafficTarget(v3, 20, LATEST_TAG), TrafficTarget(v2, 80, PREV_TAG))


def test_a_superseded_canary_is_retired_once_the_newer_one_takes_its_place() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    script.ready.add(v2)
    script.tick()
    v3 = script.apply(service("c", percent=20))
    plan = script.tick()
    assert split(plan) == {v2: 20, v1: 80}  # v3 starting: the running canary goes on
    script.ready.add(v3)
    plan = script.tick()
    assert split(plan) == {v3: 20, v1: 80}
    plan = script.tick(CONFIG.retire_after_s)
    assert plan.retire == {v2}


def test_a_revision_superseded_while_starting_is_stopped_at_once() -> None:
    script, v1, v2 = rolled_out_v1_then_canary_v2(20)
    script.tick()
    v3 = script.apply(service("c", percent=20))
    plan = script.tick()
    assert plan.retire == {v2}
    assert plan.keep == {v1, v3}


def test_history_forgets_old_retired_revisions_but_not_rolled_out_ones() -> None:
    script = Script()
    names = []
    for version in "abcdefg":
        names.append(script.apply(service(version)))
        script.ready.add(names[-1])
        script.tick()
        script.tick(CONFIG.retire_after_s)
    # 3 retired ones (history), then the previous rolled-out one (retired too, kept for a rollback), the latest
    assert [r.name for r in script.rollout.state.revisions] == names[2:]
    assert script.rollout.state.previous_rolledout == names[-2]


def test_state_round_trips_through_json() -> None:
    script, _, v2 = rolled_out_v1_then_canary_v2(20)
    script.ready.add(v2)
    script.tick()
    state = script.rollout.state
    assert RolloutState.from_dict(json.loads(json.dumps(state.as_dict()))) == state
    assert json.loads(json.dumps(script.tick().as_dict()))["latestReadyRevision"] == v2


@pytest.mark.parametrize("percent", [0, 20, 50, 99, 100, None])
def test_every_split_adds_up_to_100(percent: int | None) -> None:
    script, _, v2 = rolled_out_v1_then_canary_v2(20)
    script.ready.add(v2)
    script.tick()
    script.apply(service("b", percent=percent))
    for _ in range(3):
        assert sum(t.percent for t in script.tick().traffic) == 100
