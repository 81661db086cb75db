"""The simulated worker over real HTTP: the openai SDK against it, its metrics, /tokenize, disconnects, its CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmserve.workers.processes import free_port
from llmserve.workers.sim import CPU_SMOLLM2, SimServer, WordTokenizer, create_app
from tests.conftest import REPO
from tests.support.openapi import OpenAISchemas
from tests.support.servers import ServerThread, serving
from tests.support.waiting import eventually

FAST = CPU_SMOLLM2.with_overrides(
    name="fast",
    block_size=16,
    num_blocks=512,
    step_floor_ms=0.0,
    step_base_ms=2.0,
    decode_ms_per_seq=0.1,
    prefill_ms_per_token=0.001,
    request_overhead_ms=0.0,
    output_tokens=20,
)
NAMES = (
    "num_requests_running",
    "num_requests_waiting",
    "kv_cache_usage_perc",
    "gpu_cache_usage_perc",
    "gpu_prefix_cache_hit_rate",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
    "prompt_tokens_total",
    "generation_tokens_total",
    "time_to_first_token_seconds_count",
    "e2e_request_latency_seconds_count",
)
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the simulator."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[ServerThread, SimServer]]:
    app = create_app("smol", profile=FAST, lora_modules=["adapter"], legacy_metrics=True)
    with serving(app) as server:
        yield server, app


@pytest.fixture
def client(sim: tuple[ServerThread, SimServer]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim[0].url}/v1", api_key="unused", max_retries=0)


def tokens_of(url: str, **body: object) -> int:
    return int(httpx.post(f"{url}/tokenize", json=body).json()["count"])


def test_chat_and_completion_counts(
    sim: tuple[ServerThread, SimServer], client: openai.OpenAI, openai_schemas: OpenAISchemas
) -> None:
    url = sim[0].url
    raw = client.chat.completions.with_raw_response.create(model="smol", messages=MESSAGES, max_tokens=7)
    openai_schemas.check("CreateChatCompletionResponse", json.loads(raw.text))
    answer = raw.parse()
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "smol"
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 7
    assert answer.usage.prompt_tokens == tokens_of(url, messages=MESSAGES)
    assert len(WordTokenizer().encode(answer.choices[0].message.content or "")) == 7

    natural = client.chat.completions.create(model="smol", messages=MESSAGES)
    assert natural.choices[0].finish_reason == "stop"
    assert natural.usage is not None
    assert natural.usage.completion_tokens == FAST.output_tokens
    long = client.chat.completions.create(
        model="smol", messages=MESSAGES, max_tokens=30, extra_body={"ignore_eos": True}
    )
    assert long.usage is not None
    assert long.usage.completion_tokens == 30

    raw_completion = client.completions.with_raw_response.create(model="smol", prompt=["one", "two"], max_tokens=3, n=2)
    openai_schemas.check("CreateCompletionResponse", json.loads(raw_completion.text))
    completion = raw_completion.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens == tokens_of(url, prompt="one") + tokens_of(url, prompt="two")


def test_streams_send_role_tokens_finish_usage_and_done(
    sim: tuple[ServerThread, SimServer], client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model="smol",
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [c for c in chunks[1:] if c.choices]
    assert len(content) == 5
    assert all(c.choices[0].delta.content for c in content)
    assert [c.choices[0].finish_reason for c in content] == [None, None, None, None, "length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5

    two = list(client.completions.create(model="adapter", prompt="x y z", max_tokens=3, n=2, stream=True))
    assert sorted(c.choices[0].index for c in two) == [0, 0, 0, 1, 1, 1]
    assert all(c.model == "adapter" for c in two)

    body = {"model": "smol", "prompt": "hi", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{sim[0].url}/v1/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 3


def test_errors_come_in_openai_envelopes(sim: tuple[ServerThread, SimServer], client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert missing.value.body == {
        "message": "The model `nope` does not exist. Valid aliases: smol, adapter.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=0)
    assert bad.value.body["param"] == "max_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smol", prompt="word " * 3000, stream=True)
    url = sim[0].url
    broken = httpx.post(f"{url}/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "Bad Request"
    assert httpx.get(f"{url}/v1/nothing").json() == {"detail": "Not Found"}
    assert httpx.get(f"{url}/v1/chat/completions").status_code == 405


def test_models_tokenize_health_version(sim: tuple[ServerThread, SimServer], client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"smol", "adapter"}
    assert models["adapter"].model_extra is not None
    assert models["adapter"].model_extra["parent"] == "smol"
    url = sim[0].url
    answer = httpx.post(f"{url}/tokenize", json={"model": "smol", "prompt": "Hello world, how are you?"}).json()
    assert answer["count"] == len(answer["tokens"]) > 0
    assert answer["max_model_len"] == FAST.max_model_len
    assert answer["token_strs"] is None
    assert httpx.post(f"{url}/tokenize", json={"messages": MESSAGES}).json()["count"] > answer["count"]
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200
    assert health.content == b""
    assert httpx.get(f"{url}/version").json() == {"version": "0.32.0"}


def test_metrics_show_vllm_names_and_prefix_cache_hits(
    sim: tuple[ServerThread, SimServer], client: openai.OpenAI
) -> None:
    url = sim[0].url
    prompt = "shared context " * 40
    for _ in range(2):
        client.completions.create(model="smol", prompt=prompt, max_tokens=1)
    text = httpx.get(f"{url}/metrics").text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    labels = '{engine="0",model_name="smol"}'
    for name in NAMES:
        assert f"vllm:{name}{labels}" in samples, name
    assert samples[f"vllm:prefix_cache_hits_total{labels}"] >= 64
    assert any(k.startswith('vllm:cache_config_info{block_size="16"') for k in samples)
    assert any(k.startswith('vllm:lora_requests_info{max_lora="1"') for k in samples)


def test_client_disconnect_aborts_the_request(sim: tuple[ServerThread, SimServer]) -> None:
    server, app = sim
    body = {"model": "smol", "messages": MESSAGES, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert eventually(lambda: app.engine.num_running == 1, 5)
    assert eventually(lambda: app.engine.num_running == 0, 5)
    aborted = app.engine.stats.request_success.get("abort", 0)
    assert aborted == 0  # like vLLM: an abort is not a success

    plain = {"model": "smol", "messages": MESSAGES, "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=plain, timeout=0.3)
    assert eventually(lambda: app.engine.num_running == 0, 5)


def test_the_cli_starts_fast_serves_and_stops_on_sigint() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmserve.workers.sim", "--port", str(port), "--model", "cli-model",
         "--profile", "h100-llama-8b", "--speed", "10", "--max-model-len", "4096"],
        cwd=REPO, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert eventually(healthy, 20)  # a bound for a hung start, not a timing goal (~0.3 s on an idle machine)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions", json={"model": "cli-model", "prompt": "hi", "max_tokens": 4}
        ).json()
        assert answer["usage"]["completion_tokens"] == 4
        assert json.loads(httpx.get(f"http://127.0.0.1:{port}/v1/models").text)["data"][0]["max_model_len"] == 4096
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err.decode()
    assert b"ready in" in err


def test_the_simulator_imports_nothing_heavy() -> None:
    """Fast start is a property of what gets imported: no vLLM, torch, transformers, pydantic or FastAPI."""
    code = (
        "import sys, uvicorn, llmserve.workers.sim.__main__, llmserve.workers.sim.app\n"
        "heavy = ('torch', 'vllm', 'transformers', 'fastapi', 'pydantic', 'starlette', 'numpy', 'httpx')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
