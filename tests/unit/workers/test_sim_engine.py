"""The simulated engine, stepped by hand under a manual clock: caching, batching, queueing and step timing."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.workers.sim import EngineProfile, ManualClock, SimEngine, SimRequest

TINY = EngineProfile(
    name="tiny",
    block_size=4,
    num_blocks=16,
    max_num_seqs=2,
    max_num_batched_tokens=64,
    max_model_len=32,
    step_base_ms=10.0,
    decode_ms_per_seq=1.0,
    prefill_ms_per_token=0.5,
)


def engine(**overrides: object) -> tuple[SimEngine, ManualClock]:
    clock = ManualClock()
    return SimEngine(TINY.with_overrides(**overrides), clock), clock


def prompt(n: int, first: int = 1) -> list[int]:
    return list(range(first, first + n))


def drain(sim: SimEngine, clock: ManualClock) -> int:
    return sim.run_until_idle(clock.advance)


def test_one_request_timing_prefill_then_decode_steps() -> None:
    sim, clock = engine()
    request = sim.add_request(prompt(10), max_tokens=3)
    first = sim.schedule()
    assert (first.prefill_tokens, first.decode_seqs) == (10, 0)
    assert first.duration == pytest.approx(0.015)  # 10 ms + 10 tokens * 0.5 ms
    clock.advance(first.duration)
    sim.complete(first)
    assert len(request.output_token_ids) == 1
    assert request.first_token_at == pytest.approx(0.015)
    assert drain(sim, clock) == 2  # two decode steps of 10 + 1 ms
    assert request.finish_reason == "length"
    assert request.finished_at == pytest.approx(0.015 + 2 * 0.011)
    assert sim.stats.ttft.total == pytest.approx(0.015)
    assert sim.stats.e2e.total == pytest.approx(0.037)
    assert (sim.stats.prompt_tokens, sim.stats.generation_tokens) == (10, 3)
    assert sim.pool.usage == 0.0


def test_decode_step_grows_with_batch_size() -> None:
    sim, clock = engine()
    sim.add_request(prompt(4), max_tokens=5)
    sim.add_request(prompt(4, first=100), max_tokens=5)
    prefill = sim.schedule()
    assert (prefill.prefill_tokens, len(prefill.entries)) == (8, 2)
    clock.advance(prefill.duration)
    sim.complete(prefill)
    decode = sim.schedule()
    assert decode.decode_seqs == 2
    assert decode.duration == pytest.approx(0.012)


def test_step_floor_and_context_cost() -> None:
    profile = TINY.with_overrides(step_floor_ms=50.0, prefill_ms_per_token_kctx=2.0, decode_ms_per_seq_kctx=4.0)
    assert profile.step_ms(decode_seqs=1, prefill_tokens=0) == 50.0
    assert profile.step_ms(decode_seqs=0, prefill_tokens=0) == 0.0
    assert profile.step_ms(0, 1000, prefill_token_kctx=500.0) == pytest.approx(10 + 500 + 1000)
    assert profile.step_ms(20, 0, decode_kctx=10.0) == pytest.approx(10 + 20 + 40)


def test_decoding_a_longer_context_costs_more() -> None:
    sim, clock = engine(decode_ms_per_seq_kctx=100.0)
    sim.add_request(prompt(4), max_tokens=3)
    sim.add_request(prompt(24, first=100), max_tokens=3)
    first = sim.schedule()
    clock.advance(first.duration)
    sim.complete(first)
    decode = sim.schedule()
    assert decode.decode_seqs == 2
    assert decode.duration == pytest.approx((10 + 2 * 1 + 100 * (4 + 24) / 1000) / 1000)
    assert first.duration == pytest.approx((10 + 28 * 0.5) / 1000)  # prefill does not pay the decode term


def test_repeated_prompt_hits_the_prefix_cache() -> None:
    sim, clock = engine()
    sim.add_request(prompt(10), max_tokens=1)
    drain(sim, clock)
    again = sim.add_request(prompt(10), max_tokens=1)
    step = sim.schedule()
    assert step.prefill_tokens == 2  # blocks [1..4] and [5..8] are cached
    assert again.num_computed == 8
    assert (sim.stats.prefix_cache_queries, sim.stats.prefix_cache_hits) == (20, 8)


def test_fully_cached_prompt_recomputes_its_last_block() -> None:
    sim, clock = engine()
    sim.add_request(prompt(8), max_tokens=1)
    drain(sim, clock)
    sim.add_request(prompt(8), max_tokens=1)
    assert sim.schedule().prefill_tokens == 4  # at most 7 tokens may hit: one whole block is recomputed


def test_prefix_cache_needs_equal_prefixes_and_the_same_adapter() -> None:
    sim, clock = engine(max_num_seqs=4)
    sim.add_request(prompt(12), max_tokens=1)
    drain(sim, clock)
    changed_head = [99, *prompt(11, first=2)]
    sim.add_request(changed_head, max_tokens=1)
    sim.add_request(prompt(12), max_tokens=1, lora="adapter")
    step = sim.schedule()
    assert step.prefill_tokens == 24
    assert sim.stats.prefix_cache_hits == 0


def test_generated_blocks_are_cached_for_the_next_turn() -> None:
    sim, clock = engine()
    first = sim.add_request(prompt(6), max_tokens=7)  # 13 tokens, 12 computed (the last one never is)
    drain(sim, clock)
    conversation = [*prompt(6), *first.output_token_ids, 7]  # prompt + answer + the next user message
    sim.add_request(conversation, max_tokens=1)
    sim.schedule()
    assert sim.stats.prefix_cache_hits == 12  # three full blocks, two of them written while decoding


def test_lru_evicts_the_least_recently_freed_blocks_tail_first() -> None:
    sim, clock = engine(num_blocks=8)  # 32 tokens of KV
    a = sim.add_request(prompt(12, first=1), max_tokens=1)  # 3 blocks
    drain(sim, clock)
    b = sim.add_request(prompt(12, first=100), max_tokens=1)  # 3 blocks
    drain(sim, clock)
    assert sim.pool.num_cached == 6
    assert sim.pool.num_free == 8
    sim.add_request(prompt(16, first=200), max_tokens=1)  # 4 blocks: the 2 never used, then 2 evicted
    drain(sim, clock)
    assert sim.pool.evictions == 2
    cached = [sim.pool.is_cached(h) for h in a.block_hashes + b.block_hashes]
    assert cached == [True, False, False, True, True, True]  # A was freed first, and its tail goes first


def test_max_num_seqs_caps_the_batch_and_the_rest_wait() -> None:
    sim, clock = engine()
    requests = [sim.add_request(prompt(4, first=10 * i), max_tokens=2) for i in range(3)]
    step = sim.schedule()
    assert [r for r, _ in step.entries] == requests[:2]
    assert (sim.num_running, sim.num_waiting) == (2, 1)
    clock.advance(step.duration)
    sim.complete(step)
    drain(sim, clock)
    assert all(r.finished for r in requests)
    assert requests[2].scheduled_at is not None
    assert requests[0].finished_at is not None
    assert requests[2].scheduled_at >= requests[0].finished_at


def test_requests_wait_for_free_blocks() -> None:
    sim, clock = engine(num_blocks=8, max_num_seqs=8)
    big = sim.add_request(prompt(24), max_tokens=4)  # 6 blocks, 7 once it decodes past 28 tokens
    small = sim.add_request(prompt(12, first=100), max_tokens=1)  # 3 blocks: does not fit beside it
    sim.schedule()
    assert (sim.num_running, sim.num_waiting) == (1, 1)
    assert sim.gauges().waiting == 1
    drain(sim, clock)
    assert big.finished
    assert small.finished
    assert small.scheduled_at is not None
    assert big.finished_at is not None
    assert small.scheduled_at >= big.finished_at


def test_out_of_blocks_while_decoding_preempts_the_newest_request() -> None:
    sim, clock = engine(num_blocks=4, max_num_seqs=4, max_model_len=16)
    old = sim.add_request(prompt(7), max_tokens=6)  # 2 blocks, a third at its 9th token
    new = sim.add_request(prompt(7, first=50), max_tokens=6)
    drain(sim, clock)
    assert old.finished
    assert new.finished
    assert sim.stats.preemptions >= 1
    assert new.num_preemptions >= 1
    assert old.num_preemptions == 0
    assert len(new.output_token_ids) == 6


def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    sim, clock = engine(max_num_batched_tokens=8)
    request = sim.add_request(prompt(20), max_tokens=1)
    chunks = []
    while not request.finished:
        step = sim.schedule()
        chunks.append(step.prefill_tokens)
        clock.advance(step.duration)
        sim.complete(step)
    assert chunks == [8, 8, 4]
    assert request.first_token_at == pytest.approx(3 * 0.010 + 20 * 0.0005)


def test_decodes_share_the_token_budget_with_a_chunked_prefill() -> None:
    sim, clock = engine(max_num_batched_tokens=8)
    first = sim.add_request(prompt(4), max_tokens=10)
    step = sim.schedule()
    clock.advance(step.duration)
    sim.complete(step)
    sim.add_request(prompt(20, first=100), max_tokens=1)
    step = sim.schedule()
    assert (step.decode_seqs, step.prefill_tokens) == (1, 7)
    assert first in [r for r, _ in step.entries]


def test_natural_end_of_sequence_and_abort() -> None:
    sim, clock = engine()
    stops = sim.add_request(prompt(4), max_tokens=10, eos_after=3)
    aborted = sim.add_request(prompt(4, first=50), max_tokens=10)
    step = sim.schedule()
    clock.advance(step.duration)
    sim.complete(step)
    free_before = sim.pool.num_free
    sim.abort(aborted)
    assert aborted.finish_reason == "abort"
    assert sim.num_running == 1
    assert sim.pool.num_free > free_before
    drain(sim, clock)
    assert stops.finish_reason == "stop"
    assert len(stops.output_token_ids) == 3
    assert sim.stats.request_success == {"stop": 1}


def test_waiting_request_can_be_aborted() -> None:
    sim, _ = engine(max_num_seqs=1)
    sim.add_request(prompt(4), max_tokens=2)
    queued = sim.add_request(prompt(4, first=9), max_tokens=2)
    sim.schedule()
    sim.abort(queued)
    assert sim.num_waiting == 0
    assert queued.finished


def test_lora_adapters_beyond_max_loras_wait_without_blocking_others() -> None:
    sim, clock = engine(max_num_seqs=4)
    a = sim.add_request(prompt(4), max_tokens=3, lora="a")
    b = sim.add_request(prompt(4, first=20), max_tokens=3, lora="b")
    base = sim.add_request(prompt(4, first=40), max_tokens=3)
    step = sim.schedule()
    assert [r for r, _ in step.entries] == [a, base]
    assert sim.gauges().running_loras == ["a"]
    assert sim.gauges().waiting_loras == ["b"]
    drain(sim, clock)
    assert b.finished
    assert b.scheduled_at is not None
    assert a.finished_at is not None
    assert b.scheduled_at >= a.finished_at


def test_rejects_what_cannot_fit() -> None:
    sim, _ = engine()
    with pytest.raises(ValueError, match="max_model_len"):
        sim.add_request(prompt(30), max_tokens=5)
    with pytest.raises(ValueError, match="empty"):
        sim.add_request([], max_tokens=5)
    with pytest.raises(ValueError, match="cannot hold"):
        SimEngine(TINY.with_overrides(num_blocks=2), ManualClock())
    with pytest.raises(ValueError, match="unknown profile fields"):
        TINY.with_overrides(no_such_field=1)


async def test_the_run_loop_sleeps_on_the_injected_clock() -> None:
    clock = ManualClock()
    sim = SimEngine(TINY, clock)
    updates: list[int] = []
    loop = asyncio.create_task(sim.run())
    request: SimRequest = sim.add_request(prompt(10), max_tokens=3, on_update=lambda: updates.append(1))
    for _ in range(20):  # let the loop schedule the prefill and go to sleep
        await asyncio.sleep(0)
    assert request.output_token_ids == []
    assert clock.next_deadline == pytest.approx(0.015)
    clock.advance(0.015)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(request.output_token_ids) == 1
    assert updates == [1]
    clock.advance(0.011)
    for _ in range(20):
        await asyncio.sleep(0)
    clock.advance(0.011)
    for _ in range(20):
        await asyncio.sleep(0)
    assert request.finished
    assert request.finished_at == pytest.approx(0.037)
    sim.stop()
    await asyncio.wait_for(loop, 1)


async def test_a_step_after_an_idle_gap_starts_when_the_request_arrives() -> None:
    clock = ManualClock()
    sim = SimEngine(TINY, clock)
    loop = asyncio.create_task(sim.run())

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    first = sim.add_request(prompt(10), max_tokens=1)
    await settle()
    clock.advance(0.015)
    await settle()
    assert first.finished_at == pytest.approx(0.015)
    clock.advance(0.005)  # idle for 5 ms, shorter than the next step
    second = sim.add_request(prompt(10, first=50), max_tokens=1)
    await settle()
    assert clock.next_deadline == pytest.approx(0.020 + 0.015)
    clock.advance(0.015)
    await settle()
    assert second.finished_at == pytest.approx(0.035)
    sim.stop()
    await asyncio.wait_for(loop, 1)
