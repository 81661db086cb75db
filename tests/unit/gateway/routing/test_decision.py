"""gateway/routing/decision.py and the decision the scheduler leaves on each request's context."""

from __future__ import annotations

import random

from gateway.ledger import LoadLedger
from gateway.routing.decision import FALLBACK, ONLY_REPLICA, TIE, Decision, winning_scorer
from gateway.routing.profiles import BUILTIN, build_profile, load_profiles
from gateway.routing.scheduler import Scheduler
from llmserve.protocol.vllm_metrics import Scraped
from tests.unit.gateway.routing.test_scheduler import DOCUMENT, ENDPOINTS, ctx


def test_the_winner_is_the_scorer_that_put_the_chosen_one_ahead_of_the_runner_up() -> None:
    names, weights = ["prefix", "queue"], [1.0, 1.0]
    # candidate 0 wins on prefix (1.0 vs 0.0) though it loses a little on queue (0.5 vs 1.0)
    scores = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.2]]
    totals = [1.5, 1.0, 0.2]
    assert winning_scorer(names, weights, scores, totals, 0) == "prefix"
    assert winning_scorer(names, [0.1, 5.0], scores, [0.6, 5.0, 1.0], 1) == "queue"
    assert winning_scorer(names, weights, [[1.0, 1.0], [0.5, 0.5]], [1.5, 1.5], 1) is None  # a tie
    assert winning_scorer(names, weights, [[1.0], [1.0]], [2.0], 0) is None  # nobody to beat


def test_prefix_hit_share() -> None:
    assert Decision("p", "s", 100, 75).prefix_hit == 0.75
    assert Decision("p", "s", None, None).prefix_hit is None
    assert Decision("p", "s", 0, 0).prefix_hit is None


def scheduler(profile: str) -> Scheduler:
    ledger = LoadLedger()
    for endpoint in ENDPOINTS:
        ledger.record_scrape(endpoint, Scraped(block_size=16), now=100.0)
    return Scheduler(load_profiles(rng=random.Random(1), clock=lambda: 100.0), ledger, default_profile=profile)


async def test_a_repeated_document_is_won_by_the_prefix_scorers_with_its_hit_counted() -> None:
    sched = scheduler("token-aware")
    first = ctx(DOCUMENT + "Question one?")
    (await sched.assign(first, ENDPOINTS)).release()
    assert first.decision is not None
    assert first.decision.profile == "token-aware"
    assert first.decision.prefix_hit_tokens == 0  # nothing cached anywhere yet
    again = ctx(DOCUMENT + "Question two?")
    (await sched.assign(again, ENDPOINTS)).release()
    decision = again.decision
    assert decision is not None
    assert decision.scorer in ("prefix-cache", "prefill-wait")
    assert decision.prompt_tokens is not None
    assert decision.prefix_hit_tokens is not None
    assert decision.prefix_hit_tokens > 0.9 * decision.prompt_tokens - 16


async def test_one_replica_a_profile_without_scorers_and_a_failing_profile() -> None:
    single = ctx(DOCUMENT)
    await scheduler("token-aware").assign(single, ENDPOINTS[:1])
    assert single.decision == Decision("token-aware", ONLY_REPLICA, None, None)

    turn = ctx("x")
    await scheduler("round-robin").assign(turn, ENDPOINTS)
    assert turn.decision is not None
    assert turn.decision.scorer == "round-robin"

    idle = ctx("x")
    await scheduler("least-request").assign(idle, ENDPOINTS)  # all idle: equal scores
    assert idle.decision is not None
    assert idle.decision.scorer == TIE

    class Broken:
        name = "broken"

        def score(self, *_: object) -> list[float]:
            raise RuntimeError("bug")

    profile = build_profile("broken", BUILTIN["least-request"])
    profile.scorers.append((Broken(), 1.0))  # type: ignore[arg-type]
    sched = Scheduler({"broken": profile, "least-request": profile}, LoadLedger(), default_profile="broken")
    failed = ctx("x")
    await sched.assign(failed, ENDPOINTS)
    assert failed.decision is not None
    assert failed.decision.scorer == FALLBACK
