from __future__ import annotations

import pytest

from llmserve.protocol.errors import ServingError
from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


def test_valid_chat_keeps_unknown_fields_out_of_the_way() -> None:
    request = parse_request(ChatCompletionRequest, CHAT + b', "stream": true, "logit_bias": {"1": 2}}')
    assert request.model == "m"
    assert request.streamed


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        (b"", 400, None, "empty"),
        (b"{not json", 400, None, "could not parse the JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        (b'{"messages": []}', 400, "model", "Missing required parameter: 'model'"),
        (b'{"model": "m"}', 400, "messages", "Missing required parameter: 'messages'"),
        (b'{"model": 3, "messages": [{}]}', 400, "model", "valid string"),
        (CHAT + b', "max_tokens": "5"}', 400, "max_tokens", "valid integer"),
        (CHAT + b', "max_tokens": -1}', 400, "max_tokens", "greater than or equal to 0"),
        (CHAT + b', "n": 0}', 400, "n", "greater than or equal to 1"),
        (CHAT + b', "stream": "yes"}', 400, "stream", "valid boolean"),
        (b'{"model": "m", "messages": [1]}', 400, "messages", "messages.0"),
        (b'{"model": "m", "messages": []}', 400, "messages", "at least 1"),
    ],
)
def test_bad_chat_bodies_are_400_with_the_parameter(body: bytes, status: int, param: str | None, fragment: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_request(ChatCompletionRequest, body)
    error = info.value
    assert error.status == status
    assert error.param == param
    assert fragment in error.message
    envelope = error.openai_body()["error"]
    assert envelope["type"] == "invalid_request_error"
    assert set(envelope) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("prompt", [b'"text"', b'["a", "b"]', b"[1, 2, 3]", b"[[1, 2], [3]]"])
def test_completion_prompt_shapes(prompt: bytes) -> None:
    assert parse_request(CompletionRequest, b'{"model": "m", "prompt": ' + prompt + b"}").model == "m"


@pytest.mark.parametrize("prompt", [b"3", b'{"a": 1}', b'[1, "a"]'])
def test_completion_prompt_wrong_type(prompt: bytes) -> None:
    with pytest.raises(ServingError, match="Invalid type for 'prompt'") as info:
        parse_request(CompletionRequest, b'{"model": "m", "prompt": ' + prompt + b"}")
    assert info.value.param == "prompt"


def test_embedding_needs_input() -> None:
    with pytest.raises(ServingError, match="'input'"):
        parse_request(EmbeddingRequest, b'{"model": "m"}')


def test_error_envelopes() -> None:
    error = ServingError.no_ready_replica("svc", retry_after=7)
    assert error.status == 503
    assert error.headers == {"retry-after": "7"}
    assert error.render("/v1/chat/completions").startswith(b'{"error":{"message":')
    assert error.render("/v2/models/x/infer") == b'{"error":"No ready replica for \'svc\' yet; retry later."}'
    assert ServingError.unauthorized().error_type == "authentication_error"
    assert ServingError.upstream_failure("x").error_type == "server_error"
