"""Where a serviceName step goes on its service: the path from the protocol and the body, and the OpenAI model."""

from __future__ import annotations

import orjson
import pytest

from gateway.graph.targets import service_request
from llmserve.protocol.errors import ServingError


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"messages": []}, "/v1/chat/completions"),
        ({"prompt": "x"}, "/v1/completions"),
        ({"input": ["a"]}, "/v1/embeddings"),
    ],
)
def test_openai_paths_follow_the_body_and_the_model_is_the_services(body: dict[str, object], path: str) -> None:
    got_path, sent = service_request("s", "openai", "smollm2", orjson.dumps({"model": "rag", **body}), None)
    assert got_path == path
    assert orjson.loads(sent)["model"] == "smollm2"


def test_an_openai_body_already_naming_the_model_is_sent_unchanged() -> None:
    body = b'{"model": "smollm2", "messages": [], "extra": 1}'
    assert service_request("s", "openai", "smollm2", body, None) == ("/v1/chat/completions", body)


def test_an_openai_body_without_a_known_field_needs_a_path() -> None:
    with pytest.raises(ServingError, match="set 'path' on the step") as info:
        service_request("step root.steps[0]", "openai", "m", b'{"q": 1}', None)
    assert info.value.status == 400
    assert service_request("s", "openai", "m", b'{"q": 1}', "/v1/rerank")[0] == "/v1/rerank"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"inputs": []}', "/v2/models/iris/infer"),
        (b'{"instances": [[1]]}', "/v1/models/iris:predict"),
        (b'{"messages": []}', "/v1/models/iris:predict"),
        (b"not json", "/v1/models/iris:predict"),
    ],
)
def test_v2_services_get_v2_infer_for_tensors_and_v1_predict_otherwise(body: bytes, path: str) -> None:
    assert service_request("s", "v2", "iris", body, None) == (path, body)
