"""The virtual-time routing harness: engine prompts as the simulator builds them, and runs that repeat exactly."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.routing.sweep import RunSpec, run_one
from benchmarks.routing.vt_fleet import ChatPrompts
from llmserve.workers.sim.protocol import chat_prompt
from llmserve.workers.sim.tokenizer import WordTokenizer

SPEC = RunSpec(
    workload="rag", policy="token-aware", kv_blocks=2048, rate=20.0, seed=0, warm_requests=10,
    measured_requests=30, profile="h100-llama-8b", replicas=4, slo_s=0.5,
)  # fmt: skip


def test_cached_prompts_equal_the_simulators_chat_template() -> None:
    tokenizer = WordTokenizer()
    messages = [
        {"role": "system", "content": "You are terse.\n\nAnswer  in one line. "},
        {"role": "user", "content": "What is 12345 + 678?"},
        {"role": "assistant", "content": " the model is a small"},
        {"role": "user", "content": "And <|im_end|> then?"},
    ]
    prompts = ChatPrompts(tokenizer)
    assert prompts.encode(messages) == chat_prompt(messages, tokenizer, add_generation_prompt=True)
    assert prompts.encode(messages) == chat_prompt(messages, tokenizer, add_generation_prompt=True)  # cached


def test_a_run_repeats_exactly_and_depends_on_its_seed() -> None:
    first = run_one(SPEC)
    assert first.requests > 0
    assert first.mean_ttft_s > 0
    assert run_one(SPEC) == first
    assert run_one(replace(SPEC, seed=1)) != first


def test_every_policy_runs_chat() -> None:
    for policy in ("round-robin", "sticky-sessions", "prefix-chars", "llm-d-style", "token-aware-capped"):
        result = run_one(replace(SPEC, workload="chat", policy=policy, rate=30.0))
        assert result.requests > 0, policy


def test_exact_prefix_variants_run_and_repeat() -> None:
    from benchmarks.routing import exact_prefix

    for variant in exact_prefix.VARIANTS:
        first = exact_prefix.run_one((SPEC, variant))
        assert first.requests > 0, variant
        assert first.hit_rate > 0, variant
        assert exact_prefix.run_one((SPEC, variant)) == first, variant
