"""llmserve/ready_hint.py: the "is ready, try it" hint fits the service's protocol."""

from __future__ import annotations

import ast
import json
import shlex

from llmserve.ready_hint import example_request, ready_hint


def command_lines(hint: str) -> list[list[str]]:
    return [shlex.split(line.strip()) for line in hint.splitlines() if line.strip().startswith(("curl", "python"))]


def body_of(curl: list[str]) -> dict[str, object]:
    return dict(json.loads(curl[curl.index("-d") + 1]))


def test_an_llm_service_gets_a_streamed_chat_call_and_an_sdk_line() -> None:
    hint = ready_hint("smollm2", "openai", "http://127.0.0.1:8080", needs_key=False)
    assert "'smollm2' is ready. Try it:" in hint
    curl, python = command_lines(hint)
    assert curl[:3] == ["curl", "-N", "http://127.0.0.1:8080/v1/chat/completions"]
    assert body_of(curl)["model"] == "smollm2"
    assert body_of(curl)["stream"] is True
    assert "authorization: Bearer <your key>" not in curl
    assert python[:2] == ["python", "-c"]
    ast.parse(python[2])  # a valid one-liner
    assert "api_key='unused'" in python[2]


def test_with_keys_both_calls_say_where_the_key_goes() -> None:
    hint = ready_hint("smollm2", "openai", "http://127.0.0.1:8080", needs_key=True)
    curl, python = command_lines(hint)
    assert "authorization: Bearer <your key>" in curl
    assert "api_key='<your key>'" in python[2]


def test_a_v2_service_gets_an_infer_call_shaped_by_its_metadata() -> None:
    metadata = {"name": "iris", "platform": "sklearn",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
                "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]}  # fmt: skip
    hint = ready_hint("iris", "v2", "http://127.0.0.1:8080", needs_key=True, metadata=metadata)
    assert "chat/completions" not in hint
    assert "openai" not in hint.lower()
    infer = command_lines(hint)[0]
    assert infer[1] == "http://127.0.0.1:8080/v2/models/iris/infer"
    assert "authorization: Bearer <your key>" in infer
    assert body_of(infer) == {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                          "data": [0.0, 0.0, 0.0, 0.0]}]}  # fmt: skip


def test_without_metadata_the_hint_points_at_it() -> None:
    hint = ready_hint("iris", "v2", "http://127.0.0.1:8080", needs_key=False, metadata=None)
    assert "curl http://127.0.0.1:8080/v2/models/iris\n" in hint
    assert "/v2/models/iris/infer" in hint


def test_example_tensors_for_every_kind_of_input() -> None:
    request = example_request({"inputs": [
        {"name": "x", "datatype": "INT32", "shape": [-1, 2, 3]},
        {"name": "flag", "datatype": "BOOL", "shape": [-1]},
        {"name": "text", "datatype": "BYTES", "shape": [1, 1]},
        {"name": "half", "datatype": "FP16", "shape": [2]},
    ]})  # fmt: skip
    assert request is not None
    tensors = {t["name"]: t for t in request["inputs"]}
    assert tensors["x"]["shape"] == [1, 2, 3]
    assert tensors["x"]["data"] == [0] * 6
    assert tensors["flag"]["data"] == [False]
    assert tensors["text"]["data"] == [""]
    assert tensors["half"]["data"] == [0.0, 0.0]
    assert example_request({"inputs": []}) is None
