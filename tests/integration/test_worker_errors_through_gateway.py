"""What a client of the gateway sees when a worker answers with an error (the policy: gateway/worker_errors.py).

Marked xfail(strict=True) where the gateway does not follow the policy yet: the OpenAI proxy
(gateway/openai/proxy.py, `_relay_worker_error`) relays a worker's error body verbatim. The dispatch path of
issue 10 is to call `gateway.worker_errors.worker_error`; these tests then pass and the markers must go.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from tests.support.scripted_worker import Respond, ScriptedWorker
from tests.support.servers import serving

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_errors.json"
CASES = {case["name"]: case for case in json.loads(FIXTURE.read_text())["cases"]}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
NOT_YET = pytest.mark.xfail(
    strict=True,
    reason="bug: gateway/openai/proxy.py relays a worker's error text verbatim; the dispatch path must call "
    "gateway.worker_errors.worker_error (issue 13, part 5)",
)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, ScriptedWorker]]:
    worker = ScriptedWorker("w0")
    registry = EndpointRegistry()
    with ExitStack() as stack:
        server = stack.enter_context(serving(worker))
        registry.declare_service(ServiceInfo(name="m", model_name="m"))
        registry.publish(Endpoint(service="m", replica_id="m-0", url=server.url))
        gateway = stack.enter_context(serving(create_app(GatewaySettings(), registry)))
        yield gateway.url, worker


def through(stack: tuple[str, ScriptedWorker], status: int, body: bytes) -> httpx.Response:
    url, worker = stack
    worker.then(Respond(status, body))
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)


def test_a_context_length_error_reaches_the_client(stack: tuple[str, ScriptedWorker]) -> None:
    answer = through(stack, 400, CASES["context_length_chat"]["body"].encode())
    assert answer.status_code == 400
    assert "maximum context length is 2048 tokens" in answer.json()["error"]["message"]


@NOT_YET
@pytest.mark.parametrize("name", ["n_over_max_sequences", "message_missing_role", "bad_response_format"])
def test_worker_internals_do_not_reach_the_client(stack: tuple[str, ScriptedWorker], name: str) -> None:
    answer = through(stack, 400, CASES[name]["body"].encode())
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    for internal in ("VLLM_MAX_N_SEQUENCES", "validation error", "MessageParam", "{'type'"):
        assert internal not in message


@NOT_YET
def test_a_worker_401_is_not_the_clients_401(stack: tuple[str, ScriptedWorker]) -> None:
    """A worker refusing the gateway's credentials is the gateway's failure, not a wrong client key."""
    answer = through(stack, 401, b'{"error": "Unauthorized"}')
    assert answer.status_code == 502


@NOT_YET
def test_a_worker_500_text_stays_in_the_log(stack: tuple[str, ScriptedWorker]) -> None:
    body = b'{"error": {"message": "CUDA error at /opt/vllm/csrc/attention.cu:42", "type": "InternalServerError"}}'
    answer = through(stack, 500, body)
    assert answer.status_code == 502
    assert "attention.cu" not in answer.text
