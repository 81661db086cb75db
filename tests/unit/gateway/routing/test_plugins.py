"""Scorers, filters and pickers with fake replica states."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routing.filters import FreshSignals, LoadCap
from gateway.routing.pickers import MaxScore, RoundRobin, WeightedRandom
from gateway.routing.scorers import (
    CharPrefix,
    InFlightTokens,
    KVCache,
    LeastRequest,
    LoraAffinity,
    PrefixCache,
    QueueDepth,
    RunningRequests,
    SessionAffinity,
)
from llmserve.protocol.openai import CompletionRequest
from tests.unit.gateway.routing.helpers import candidate, chat, context


def test_load_scorers_prefer_the_idle() -> None:
    busy = candidate("busy", running=8, waiting=4, kv=0.9, in_flight=6, tokens=3000)
    idle = candidate("idle", running=1, waiting=0, kv=0.1, in_flight=1, tokens=300)
    ctx = context()
    for scorer in (QueueDepth(QueueDepth.Params()), RunningRequests(RunningRequests.Params()),
                   KVCache(KVCache.Params()), InFlightTokens(InFlightTokens.Params()),
                   LeastRequest(LeastRequest.Params())):  # fmt: skip
        busy_score, idle_score = scorer.score(ctx, [busy, idle])
        assert 0.0 <= busy_score < idle_score <= 1.0, scorer.name


def test_all_idle_scores_equal() -> None:
    ctx = context()
    a, b = candidate("a"), candidate("b")
    assert QueueDepth(QueueDepth.Params()).score(ctx, [a, b]) == [1.0, 1.0]


def test_queue_adds_what_we_sent_since_the_scrape() -> None:
    fresh = candidate("a", waiting=1)
    fresh.load.in_flight += 3  # three requests sent after the last scrape
    assert fresh.load.queued == 4
    assert fresh.load.requests == 4


def test_prefix_cache_scorer_learns_from_decisions() -> None:
    scorer = PrefixCache(PrefixCache.Params(chunk_chars=16))
    a, b = candidate("a"), candidate("b")
    doc = "d" * 128
    first = context(chat(doc))
    assert scorer.score(first, [a, b]) == [0.0, 0.0]
    scorer.learn(first, b)
    follow_up = context(chat(doc + "q" * 32))  # the same document, then two more chunks
    size = len("user") + 160
    assert scorer.score(follow_up, [a, b]) == [0.0, pytest.approx((len("user") + 128) / size)]
    assert follow_up.scratch["prefix-matched-tokens"] == {"a": 0, "b": (len("user") + 128) // 4}
    scorer.forget("svc", {"a"})
    assert scorer.score(follow_up, [a, b]) == [0.0, 0.0]


def test_prefix_cache_index_holds_what_the_kv_cache_holds() -> None:
    scorer = PrefixCache(PrefixCache.Params(chunk_chars=16))
    small = candidate("small", block_size=4)
    small.load.scraped.num_blocks = 8  # type: ignore[union-attr]  # 32 tokens = 128 characters = 8 chunks
    old, new = context(chat("o" * 124)), context(chat("n" * 124))  # 8 chunks each (with the role)
    scorer.learn(old, small)
    scorer.learn(new, small)
    assert scorer.score(context(chat("o" * 124)), [small]) == [0.0]
    assert scorer.score(context(chat("n" * 124)), [small]) == [1.0]


def test_token_id_prompts_match_exactly() -> None:
    scorer = PrefixCache(PrefixCache.Params(chunk_chars=16))  # 4 ids a chunk
    a = candidate("a")
    first = context(CompletionRequest.model_validate({"model": "base", "prompt": list(range(16))}))
    scorer.learn(first, a)
    again = context(CompletionRequest.model_validate({"model": "base", "prompt": [*range(16), 99, 98]}))
    assert scorer.score(again, [a]) == [pytest.approx(16 / 18)]
    assert again.scratch["prefix-matched-tokens"] == {"a": 16}


def test_session_affinity() -> None:
    scorer = SessionAffinity(SessionAffinity.Params(max_sessions=1))
    a, b = candidate("a"), candidate("b")
    ctx = context(session="s1")
    assert scorer.score(ctx, [a, b]) == [0.0, 0.0]
    scorer.learn(ctx, b)
    assert scorer.score(context(session="s1"), [a, b]) == [0.0, 1.0]
    assert scorer.score(context(session=None), [a, b]) == [0.0, 0.0]
    scorer.learn(context(session="s2"), a)  # capacity 1: s1 is forgotten
    assert scorer.score(context(session="s1"), [a, b]) == [0.0, 0.0]


def test_lora_affinity() -> None:
    scorer = LoraAffinity(LoraAffinity.Params())
    running = candidate("running", lora=(frozenset({"sql"}), frozenset(), 2))
    queued = candidate("queued", lora=(frozenset({"x"}), frozenset({"sql"}), 2))
    room = candidate("room", lora=(frozenset({"x"}), frozenset(), 2))
    full = candidate("full", lora=(frozenset({"x", "y"}), frozenset(), 2))
    adapter = context(chat(model="sql"))
    assert scorer.score(adapter, [running, queued, room, full]) == [1.0, 0.8, 0.5, 0.0]
    assert scorer.score(context(chat(model="base")), [running, full]) == [1.0, 1.0]


def test_char_prefix_prefers_the_longest_match_only() -> None:
    scorer = CharPrefix(CharPrefix.Params(chunk_chars=8))
    a, b, c = candidate("a"), candidate("b"), candidate("c")
    document = "x" * 64
    ctx = context(chat(document))
    assert scorer.score(ctx, [a, b, c]) == [0.0, 0.0, 0.0]
    scorer.learn(ctx, c)
    assert scorer.score(context(chat(document + " and a question")), [a, b, c]) == [0.0, 0.0, 1.0]


def test_fresh_signals_filter() -> None:
    old = candidate("old", scraped_at=90.0)
    new = candidate("new", scraped_at=99.5)
    never = candidate("never", scraped_at=None)
    kept = FreshSignals(FreshSignals.Params(stale_after_s=3), clock=lambda: 100.0).filter(context(), [old, new, never])
    assert [c.replica_id for c in kept] == ["new"]


def test_load_cap_overrides_affinity_targets() -> None:
    cap = LoadCap(LoadCap.Params(max_excess_requests=4, max_excess_ratio=1.5))
    hot = candidate("hot", running=10)
    warm = candidate("warm", running=5)
    cold = candidate("cold", running=2)
    assert [c.replica_id for c in cap.filter(context(), [hot, warm, cold])] == ["warm", "cold"]


def test_max_score_breaks_ties_at_random() -> None:
    picker = MaxScore(MaxScore.Params(), random.Random(7))
    cands = [candidate(n) for n in "abc"]
    picks = Counter(picker.pick(context(), cands, [1.0, 1.0, 0.5]).replica_id for _ in range(400))
    assert set(picks) == {"a", "b"}
    assert min(picks.values()) > 150


def test_weighted_random_follows_scores() -> None:
    picker = WeightedRandom(WeightedRandom.Params(), random.Random(3))
    cands = [candidate("a"), candidate("b")]
    picks = Counter(picker.pick(context(), cands, [3.0, 1.0]).replica_id for _ in range(4000))
    assert 0.70 < picks["a"] / 4000 < 0.80
    uniform = Counter(picker.pick(context(), cands, [0.0, 0.0]).replica_id for _ in range(1000))
    assert min(uniform.values()) > 400


def test_round_robin_per_service() -> None:
    picker = RoundRobin(RoundRobin.Params(), random.Random())
    cands = [candidate(n) for n in "ab"]
    assert [picker.pick(context(), cands, [0, 0]).replica_id for _ in range(4)] == ["a", "b", "a", "b"]
