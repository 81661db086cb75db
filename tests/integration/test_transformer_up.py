"""Transformers end to end: `llmserve up` supervises each service's transformer process next to its predictor, and
the gateway calls the hooks around dispatch (OpenAI on simulated vLLM workers, whole and streamed; V2 and KServe V1
on the V2 runtime with the example feature-scaling transformer, also as an InferenceGraph's step). A raising hook
is a clean error in the protocol's envelope and the next request succeeds; a killed transformer process is
replaced."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from llmserve.workers.processes import group_members
from tests.support import v2_models
from tests.support.up import Up, llmserve_up
from tests.support.waiting import eventually

SERVICES = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  predictor:
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--speed", "50", "--output-tokens", "6"]
  transformer:
    handler: tests/support/transformers.py:Marker
    config: {{tag: chat, max_tokens: 2}}
---
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: plain}}
spec:
  predictor:
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--speed", "50", "--output-tokens", "6"]
  transformer:
    handler: tests/support/transformers.py:WholeOnly
    config: {{tag: plain, max_tokens: 3}}
---
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: iris}}
spec:
  predictor:
    model:
      modelFormat: {{name: sklearn}}
      storageUri: file://{iris_dir}
  transformer:
    handler: configs/transformers/feature_scaling.py:StandardScaler
    config: {{mean: {mean}, scale: {scale}, labels: [setosa, versicolor, virginica]}}
  logger: {{file: {events}}}
---
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {{name: scaled}}
spec:
  nodes:
    root: {{routerType: Sequence, steps: [{{serviceName: iris}}]}}
"""
MEAN, SCALE = [5.84, 3.06, 3.76, 1.2], [0.83, 0.43, 1.76, 0.76]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
LABELS = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> v2_models.TrainedModel:
    return v2_models.sklearn_iris(tmp_path_factory.mktemp("models") / "iris")


@pytest.fixture(scope="module")
def up(iris: v2_models.TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("transformers")
    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    config = work / "services.yaml"
    events = work / "iris-events.jsonl"
    config.write_text(SERVICES.format(model_dir=model_dir, iris_dir=iris.path, mean=MEAN, scale=SCALE, events=events))
    with llmserve_up(config, work) as running:
        running.wait(lambda: all(ready(running, s) for s in ("chat", "plain", "iris")), 90, "services ready")
        yield running
        keepers = [r["pid"] for s in running.services() for r in (s["transformer"] or {}).get("replicas", [])]
    assert not [pid for pid in keepers if group_members(pid)], "transformer processes left behind"


def ready(up: Up, name: str) -> bool:
    service = up.service(name)
    return bool(service["ready_replicas"] >= 1 and service["transformer"]["ready_replicas"] >= 1)


def chat(up: Up, model: str = "chat", *, stream: bool = False, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, **extra}
    return httpx.post(f"{up.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=60)


def events(response: httpx.Response) -> list[Any]:
    data = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_openai_pre_and_post_hooks_on_whole_and_streamed_answers(up: Up) -> None:
    whole = chat(up)
    assert whole.status_code == 200, whole.text
    assert whole.json()["usage"]["completion_tokens"] == 2  # the worker got the preprocessed request
    assert whole.json()["transformed_by"] == "chat"  # and the client the postprocessed answer
    streamed = chat(up, stream=True, stream_options={"include_usage": True})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert all(chunk["transformed_by"] == "chat" for chunk in chunks)  # every chunk through the chunk hook
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    # Without a chunk hook the stream passes unchanged; whole answers are still postprocessed.
    plain = events(chat(up, "plain", stream=True, stream_options={"include_usage": True}))
    assert not any("transformed_by" in chunk for chunk in plain)
    assert plain[-1]["usage"]["completion_tokens"] == 3
    assert chat(up, "plain").json()["transformed_by"] == "plain"


def test_v2_and_v1_through_the_feature_scaling_transformer(up: Up, iris: v2_models.TrainedModel) -> None:
    expected = [LABELS[i] for i in iris.model.predict((np.array(ROWS) - MEAN) / SCALE)]
    assert expected != [LABELS[i] for i in iris.model.predict(np.array(ROWS))]  # scaling changes the answer
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": ROWS}]}
    v2 = httpx.post(f"{up.url}/v2/models/iris/infer", json=body, timeout=30)
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert (output["datatype"], output["data"]) == ("BYTES", expected)  # scaled in, named out
    v1 = httpx.post(f"{up.url}/v1/models/iris:predict", json={"instances": ROWS}, timeout=30)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == expected
    graph = httpx.post(f"{up.url}/v1/graphs/scaled", json={"instances": ROWS}, timeout=30)
    assert graph.status_code == 200, graph.text
    assert graph.json()["predictions"] == expected  # a graph step calls the service through its transformer
    assert httpx.get(f"{up.url}/v2/models/iris", timeout=30).json()["name"] == "iris"  # metadata: no hooks
    # The payload log has what the client sent and what it got (not what the transformer made of them).
    path = Path(up.log).parent / "iris-events.jsonl"
    request_id = v2.headers["x-request-id"]

    def logged() -> list[dict[str, Any]]:
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["id"] == request_id]

    assert eventually(lambda: len(logged()) == 2, within_s=10)
    request, response = logged()
    assert (request["data"], request["endpoint"]) == (body, "iris-00001")
    assert response["data"] == v2.json()


def test_a_raising_hook_is_a_clean_error_and_the_next_request_succeeds(up: Up) -> None:
    crashed = chat(up, crash=7)
    assert crashed.status_code == 500
    assert crashed.json()["error"]["message"] == "preprocess failed: RuntimeError: boom 7"
    assert crashed.json()["error"]["code"] == "transformer_error"
    rejected = chat(up, stream=True, reject="no PII")
    assert rejected.status_code == 422
    assert rejected.json()["error"] == {
        "message": "rejected: no PII", "type": "invalid_request_error", "param": None, "code": "bad_prompt",
    }  # fmt: skip
    assert chat(up).status_code == 200
    # A chunk hook that raises once the stream started: one error frame in OpenAI's envelope, then the end.
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": True}
    failed = httpx.post(f"{up.url}/v1/chat/completions", json=body, headers={"x-fail-chunk": "1"}, timeout=60)
    assert failed.status_code == 200
    *_, last = events(failed)
    assert last["error"]["message"] == "postprocess_chunk failed: RuntimeError: chunk boom"
    assert all(chunk.get("transformed_by") == "chat" for chunk in events(chat(up, stream=True)))
    bad_row = httpx.post(f"{up.url}/v1/models/iris:predict", json={"instances": [[1, 2]]}, timeout=30)
    assert bad_row.status_code == 400
    assert "each row needs 4 features" in bad_row.json()["error"]
    assert httpx.post(f"{up.url}/v1/models/iris:predict", json={"instances": ROWS}, timeout=30).status_code == 200


def test_a_killed_transformer_process_is_replaced(up: Up) -> None:
    (replica,) = up.service("chat")["transformer"]["replicas"]
    (worker,) = [pid for pid in group_members(replica["pid"]) if pid != replica["pid"]]  # under its keeper
    os.kill(worker, signal.SIGKILL)
    # Sent before anyone noticed: refused by the dead transformer, so held until the replacement is ready.
    answer = chat(up)
    assert answer.status_code == 200, answer.text
    assert answer.json()["transformed_by"] == "chat"
    up.wait(lambda: up.service("chat")["transformer"]["replicas"][0]["restarts"] == 1, 30, "replaced")
    (replaced,) = up.service("chat")["transformer"]["replicas"]
    assert replaced["state"] == "ready"
    assert replaced["url"] != replica["url"] or replaced["pid"] != replica["pid"]
    assert chat(up).json()["transformed_by"] == "chat"
