from __future__ import annotations

import random

import pytest

from gateway.ledger import LoadLedger
from gateway.routing.base import RouteContext
from gateway.routing.profiles import BUILTIN, PluginRef, ProfileSpec, build_profile, load_profiles
from gateway.routing.scheduler import Scheduler
from llmserve.endpoints import Endpoint
from llmserve.protocol.openai import CompletionRequest
from llmserve.protocol.vllm_metrics import Scraped
from tests.unit.gateway.routing.helpers import SERVICE, chat

ENDPOINTS = [Endpoint(service="svc", replica_id=f"r{i}", url=f"http://r{i}:1") for i in range(4)]
DOCUMENT = "A long shared document. " * 200


def scheduler(profile: str = "token-aware", clock: float = 100.0) -> Scheduler:
    profiles = load_profiles(rng=random.Random(1), clock=lambda: clock)
    ledger = LoadLedger()
    for endpoint in ENDPOINTS:
        ledger.record_scrape(endpoint, Scraped(block_size=16), now=clock)
    return Scheduler(profiles, ledger, default_profile=profile)


def ctx(content: str, session: str | None = None, max_tokens: int = 10) -> RouteContext:
    return RouteContext(service=SERVICE, route="chat_completions", request=chat(content, max_tokens=max_tokens),
                        session=session, body_size=len(content))  # fmt: skip


async def test_same_prefix_goes_to_the_same_replica() -> None:
    sched = scheduler()
    first = await sched.assign(ctx(DOCUMENT + "Question one?"), ENDPOINTS)
    first.release()
    for question in ("Question two?", "Another one?", "And a third?"):
        again = await sched.assign(ctx(DOCUMENT + question), ENDPOINTS)
        again.release()
        assert again.endpoint == first.endpoint


async def test_unrelated_prompts_spread_out() -> None:
    sched = scheduler()
    chosen = set()
    for i in range(12):
        assignment = await sched.assign(ctx(f"unrelated prompt number {i} " * 20), ENDPOINTS)
        chosen.add(assignment.endpoint.replica_id)  # not released: load builds up and spreads them
    assert len(chosen) == 4


async def test_imbalance_cap_overrides_affinity() -> None:
    capped = ProfileSpec(filters=[PluginRef(type="load-cap")], scorers=[PluginRef(type="prefix-cache", weight=1)])
    sched = scheduler()
    sched.profiles = {**sched.profiles, "capped": build_profile("capped", capped, rng=random.Random(1))}
    sched.default_profile = "capped"
    held = [await sched.assign(ctx(DOCUMENT + f"q{i}"), ENDPOINTS) for i in range(12)]
    counts: dict[str, int] = {}
    for assignment in held:
        counts[assignment.endpoint.replica_id] = counts.get(assignment.endpoint.replica_id, 0) + 1
    hot = max(counts, key=lambda r: counts[r])
    assert counts[hot] <= 8 + 1  # load-cap: at most maxExcessRequests above the least-loaded
    assert len(counts) > 1


async def test_a_burst_for_one_document_stays_where_it_is_computed() -> None:
    sched = scheduler()
    held = [await sched.assign(ctx(DOCUMENT + f"q{i}"), ENDPOINTS) for i in range(8)]  # no first token yet
    assert len({a.endpoint.replica_id for a in held}) == 1  # each adds a question's prefill there, not a document's


async def test_token_aware_leaves_a_warm_replica_buried_in_prefill() -> None:
    sched = scheduler()
    first = await sched.assign(ctx(DOCUMENT + "q0"), ENDPOINTS)
    first.release()
    sched.ledger.dispatch(first.endpoint, 30_000, prefill_tokens=30_000)  # others' long prompts queued there
    again = await sched.assign(ctx(DOCUMENT + "q1"), ENDPOINTS)
    assert again.endpoint != first.endpoint  # prefilling the document elsewhere is sooner


async def test_in_flight_accounting() -> None:
    sched = scheduler("least-request")
    assignment = await sched.assign(ctx("hi", max_tokens=100), ENDPOINTS)
    load = sched.ledger.load(assignment.endpoint)
    assert load.in_flight == 1
    assert load.in_flight_tokens == assignment.tokens >= 100
    service = sched.ledger.demand("svc")
    assert (service.in_flight, service.in_flight_tokens) == (1, assignment.tokens)  # counted from dispatch on
    assignment.release()
    assignment.release()  # idempotent
    assert (load.in_flight, load.in_flight_tokens) == (0, 0)
    assert sched.ledger.demand("svc").in_flight == 0


async def test_least_request_balances() -> None:
    sched = scheduler("least-request")
    held = [await sched.assign(ctx("x"), ENDPOINTS) for _ in range(8)]
    assert sorted(sched.ledger.load(e).in_flight for e in ENDPOINTS) == [2, 2, 2, 2]
    for assignment in held:
        assignment.release()


async def test_session_affinity_keeps_conversations_together() -> None:
    sched = scheduler()
    first = await sched.assign(ctx("turn one " * 10, session="conv-1"), ENDPOINTS)
    first.release()
    second = await sched.assign(ctx("a different turn two " * 10, session="conv-1"), ENDPOINTS)
    assert second.endpoint == first.endpoint


async def test_failing_plugin_fails_open_to_least_loaded() -> None:
    class Broken:
        name = "broken"

        def score(self, ctx: RouteContext, candidates: list[object]) -> list[float]:
            raise RuntimeError("scorer bug")

    profile = build_profile("broken", BUILTIN["least-request"])
    profile.scorers.append((Broken(), 1.0))  # type: ignore[arg-type]
    ledger = LoadLedger()
    for endpoint in (ENDPOINTS[0], ENDPOINTS[1], ENDPOINTS[3]):
        ledger.dispatch(endpoint, 10)
    sched = Scheduler({"broken": profile, "least-request": profile}, ledger, default_profile="broken")
    assignment = await sched.assign(ctx("x"), ENDPOINTS)
    assert assignment.endpoint == ENDPOINTS[2]


async def test_prompt_tokens_are_estimated_then_learned_from_usage() -> None:
    sched = scheduler("token-aware")
    context = ctx(DOCUMENT)
    assignment = await sched.assign(context, ENDPOINTS)
    assert context.prompt_tokens == round((len("user") + len(DOCUMENT)) / 4)  # 4 characters a token, at first
    assert assignment.tokens == context.prompt_tokens + 10
    sched.observe_usage(context, prompt_tokens=(len("user") + len(DOCUMENT)) // 6)  # the worker counted fewer
    again = ctx(DOCUMENT)
    await sched.assign(again, ENDPOINTS)
    assert again.prompt_tokens == pytest.approx((len("user") + len(DOCUMENT)) / 6, rel=0.01)
    sched.observe_usage(again, None)  # a stream without usage teaches nothing
    assert sched.tokens.chars_per_token("svc") == pytest.approx(6, rel=0.01)


async def test_token_id_prompts_are_counted_exactly() -> None:
    sched = scheduler("token-aware")
    request = CompletionRequest.model_validate({"model": "base", "prompt": list(range(300)), "max_tokens": 5})
    context = RouteContext(service=SERVICE, route="completions", request=request)
    await sched.assign(context, ENDPOINTS)
    assert context.prompt_tokens == 300
    sched.observe_usage(context, 300)
    assert sched.tokens.chars_per_token("svc") == 4.0  # nothing to learn from exact counts
