"""InferenceGraphs through the real gateway: one `llmserve up -f` (a subprocess, as a user runs it, with an API key)
whose file mixes services and graphs: two predictive models on the V2 runtime (scikit-learn and XGBoost iris),
simulated vLLM workers (real processes) and one that scales from zero. Every graph step goes through the
gateway's dispatch path (scheduler, ledger, activator); the semantics are KServe's router's, plus streaming."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.up import Up, llmserve_up
from tests.support.v2_models import sklearn_iris, xgboost_iris
from tests.support.waiting import eventually

KEY = "graph-key"
SETOSA = [5.1, 3.5, 1.4, 0.2]  # class 0
VIRGINICA = [6.2, 3.4, 5.4, 2.3]  # class 2
NO_MATCH = "None of the routes matched with the switch condition"

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  predictor:
    minReplicas: {min_replicas}
    maxReplicas: 1
    model: {model}
---
"""
SIM = "{{modelFormat: {{name: huggingface}}, runtime: vllm-sim, storageUri: 'file://{sim_dir}', args: [--speed, '10']}}"
V2 = "{{modelFormat: {{name: {kind}}}, storageUri: 'file://{path}'}}"
GRAPH = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {{name: {name}}}
spec: {spec}
---
"""


def seq(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Sequence", "steps": list(steps)}}


def node(router: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": router, "steps": list(steps)}}


MISSING = {"serviceName": "iris", "path": "/v1/models/no-such-model:predict"}  # the runtime answers 404
GRAPHS: dict[str, dict[str, Any]] = {
    "dogs": {"nodes": seq({"serviceName": "iris"}, {"serviceName": "xgb", "condition": "predictions.#(==0)"})},
    "original": {"nodes": seq({"serviceName": "iris"}, {"serviceName": "xgb"})},
    "mapped": {
        "nodes": seq(
            {"serviceName": "xgb"},
            {"serviceName": "iris", "data": "$response", "mapPredictionsToInstances": True, "dependency": "Hard"},
        )
    },
    "hard": {"nodes": seq({**MISSING, "dependency": "Hard"}, {"serviceName": "iris"})},
    "soft": {"nodes": seq({**MISSING, "dependency": "Soft"}, {"serviceName": "iris"})},
    "pick": {
        "exposeAs": {"model": "picker"},
        "nodes": node(
            "Switch",
            {"serviceName": "xgb", "condition": '[@this].#(model=="xgb")'},
            {"serviceName": "iris", "condition": "instances"},
        ),
    },
    "both": {"nodes": node("Ensemble", {"serviceName": "iris", "name": "sklearn"}, {"serviceName": "xgb"})},
    "broken": {
        "nodes": node("Ensemble", {"serviceName": "iris"}, {"serviceName": "xgb"}, {**MISSING, "dependency": "Hard"})
    },
    "split": {"nodes": node("Splitter", {"serviceName": "iris", "weight": 10}, {"serviceName": "xgb", "weight": 90})},
    "chat": {
        "exposeAs": {"model": "chat-graph"},
        "nodes": seq({"serviceName": "llm", "name": "draft"}, {"serviceName": "llm", "name": "answer", "stream": True}),
    },
    "talk": {"nodes": seq({"serviceName": "llm", "stream": True})},
    "wake": {"nodes": seq({"serviceName": "sleepy", "stream": True})},
}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("graph-gateway")
    sim_dir = work / "sim-model"
    sim_dir.mkdir()
    (sim_dir / "config.json").write_text("{}")
    iris, xgb = sklearn_iris(work / "models" / "iris"), xgboost_iris(work / "models" / "xgb")
    sim = SIM.format(sim_dir=sim_dir)
    text = SERVICE.format(name="iris", min_replicas=1, model=V2.format(kind="sklearn", path=iris.path))
    text += SERVICE.format(name="xgb", min_replicas=1, model=V2.format(kind="xgboost", path=xgb.path))
    text += SERVICE.format(name="llm", min_replicas=1, model=sim)
    text += SERVICE.format(name="sleepy", min_replicas=0, model=sim)
    text += "".join(GRAPH.format(name=name, spec=json.dumps(spec)) for name, spec in GRAPHS.items())
    config = work / "graphs.yaml"
    config.write_text(text.removesuffix("---\n"))
    with llmserve_up(config, work, api_key=KEY) as running:
        running.wait_ready(120)
        yield running


def post(up: Up, graph: str, body: Any, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{up.url}/v1/graphs/{graph}", json=body, headers=up.headers, timeout=timeout)


def replica_url(up: Up, service: str) -> str:
    (replica,) = [r for r in up.replicas(service) if r["state"] == "ready"]
    return str(replica["url"])


def sim_metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    prefixes = (f"vllm:{name}{{", f"vllm:{name} ")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes))


def in_flight(url: str) -> float:
    return sim_metric(url, "num_requests_running") + sim_metric(url, "num_requests_waiting")


def gateway_metric(up: Up, pattern: str) -> float:
    """The sum of the series named in `pattern` (`name\\{label="value",...\\}`) that carry those labels; other labels
    (service, revision on llmserve_requests_total) may be there too, in any order."""
    text = httpx.get(f"{up.url}/metrics", headers=up.headers, timeout=5).text
    name, _, wanted_text = pattern.replace("\\", "").partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', wanted_text))
    total = 0.0
    for series_name, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        if series_name == name and wanted.items() <= dict(re.findall(r'(\w+)="([^"]*)"', labels)).items():
            total += float(value)
    return total


def test_sequence_with_request_response_and_a_condition(up: Up) -> None:
    met = post(up, "dogs", {"instances": [SETOSA]})
    not_met = post(up, "dogs", {"instances": [VIRGINICA]})
    assert met.status_code == 200, met.text
    (probabilities,) = met.json()["predictions"]
    assert len(probabilities) == 3  # the XGBoost step ran: class probabilities
    assert probabilities[0] > 0.5
    assert (not_met.status_code, not_met.json()) == (200, {"predictions": [2]})  # iris's own answer
    # $request (the default): the second step is sent the graph's input, not iris's answer.
    original = post(up, "original", {"instances": [SETOSA]})
    assert len(original.json()["predictions"][0]) == 3
    # $response + mapPredictionsToInstances: iris is sent xgb's 3 probabilities as features (it needs 4).
    mapped = post(up, "mapped", {"instances": [SETOSA]})
    assert mapped.status_code == 400
    assert "feature" in mapped.json()["error"]
    # KServe's convention: any path below the graph reaches its root.
    assert post(up, "dogs/v1/models/anything:predict", {"instances": [VIRGINICA]}).json() == {"predictions": [2]}


def test_hard_and_soft_failures(up: Up) -> None:
    hard = post(up, "hard", {"instances": [SETOSA]})
    assert hard.status_code == 404  # the failing step's status and body
    assert "no-such-model" in hard.text
    soft = post(up, "soft", {"instances": [SETOSA]})
    assert (soft.status_code, soft.json()) == (200, {"predictions": [0]})


def test_switch_first_match_and_no_match(up: Up) -> None:
    to_xgb = post(up, "pick", {"model": "xgb", "instances": [SETOSA]})
    to_iris = post(up, "pick", {"model": "sk", "instances": [SETOSA]})
    none = post(up, "pick", {"rows": [SETOSA]})
    assert len(to_xgb.json()["predictions"][0]) == 3
    assert to_iris.json() == {"predictions": [0]}
    assert none.status_code == 404
    assert none.json() == {"error": "Failed to process request", "cause": NO_MATCH}


def test_ensemble_merge_and_hard_failure(up: Up) -> None:
    answer = post(up, "both", {"instances": [VIRGINICA]})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"sklearn", "1"}
    assert body["sklearn"] == {"predictions": [2]}
    assert len(body["1"]["predictions"][0]) == 3
    broken = post(up, "broken", {"instances": [VIRGINICA]})
    assert broken.status_code == 404
    assert "no-such-model" in broken.text


def test_splitter_distribution_over_2000_requests(up: Up) -> None:
    picks = {"iris": 0, "xgb": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        with httpx.Client(headers=up.headers, timeout=60) as http:
            for _ in range(count):
                answer = http.post(f"{up.url}/v1/graphs/split", json={"instances": [SETOSA]})
                with lock:
                    if answer.status_code != 200:
                        failures.append(answer.text)
                    else:
                        picks["iris" if answer.json() == {"predictions": [0]} else "xgb"] += 1

    threads = [threading.Thread(target=client, args=(500,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert abs(picks["iris"] / 2000 - 0.10) <= 0.03
    assert abs(picks["xgb"] / 2000 - 0.90) <= 0.03
    # Each step was one request to its service for the ledger and the metrics.
    assert gateway_metric(up, r'llmserve_requests_total\{model="split",route="graph",status="200"\}') >= 2000


CHAT = {"messages": [{"role": "user", "content": "Tell me a long story."}]}


def test_a_sequence_ending_on_an_llm_streams_before_the_worker_finishes(up: Up) -> None:
    llm = replica_url(up, "llm")
    body = {**CHAT, "model": "anything", "stream": True, "max_tokens": 60, "ignore_eos": True}
    with (
        httpx.Client(headers=up.headers) as client,
        client.stream("POST", f"{up.url}/v1/graphs/chat", json=body, timeout=60) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["x-request-id"]
        lines = answer.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"delta"' in first
        assert in_flight(llm) == 1  # the worker is still generating the answer
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) >= 60


def test_a_graph_exposed_as_a_model_answers_the_openai_sdk(up: Up) -> None:
    client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    models = {m.id for m in client.models.list()}
    assert {"chat-graph", "picker", "llm"} <= models
    assert client.models.retrieve("chat-graph").id == "chat-graph"
    whole = client.chat.completions.create(model="chat-graph", messages=CHAT["messages"], max_tokens=5)
    assert whole.choices[0].message.content
    assert whole.model == "llm"  # the answering step's own model name
    stream = client.chat.completions.create(model="chat-graph", messages=CHAT["messages"], max_tokens=8, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) >= 8
    with pytest.raises(openai.NotFoundError) as no_route:  # the Switch exposed as "picker" matches no route
        client.chat.completions.create(model="picker", messages=CHAT["messages"])
    assert no_route.value.code == "no_route_matched"
    assert NO_MATCH in no_route.value.message
    assert (
        gateway_metric(up, r'llmserve_requests_total\{model="chat-graph",route="chat_completions",status="200"\}') == 2
    )


def test_client_disconnect_aborts_the_streaming_step(up: Up) -> None:
    llm = replica_url(up, "llm")
    before = sim_metric(llm, "generation_tokens_total")
    body = {**CHAT, "model": "llm", "stream": True, "max_tokens": 2000, "ignore_eos": True}
    with (
        httpx.Client(headers=up.headers) as client,
        client.stream("POST", f"{up.url}/v1/graphs/talk", json=body, timeout=60) as answer,
    ):
        lines = answer.iter_lines()  # held: dropping httpx's line iterator would close the response already
        next(line for line in lines if line.startswith("data: "))
        assert in_flight(llm) == 1
    assert eventually(lambda: in_flight(llm) == 0, within_s=10)
    assert sim_metric(llm, "generation_tokens_total") - before < 1000  # stopped long before its 2000 tokens
    # The gateway released the step on its ledger too.
    assert eventually(lambda: gateway_metric(up, r'llmserve_requests_in_flight\{model="llm"\}') == 0, within_s=10)


def test_a_step_at_zero_replicas_is_woken_and_waited_for(up: Up) -> None:
    assert up.replicas("sleepy") == []
    body = {**CHAT, "model": "sleepy", "max_tokens": 4}
    answer = post(up, "wake", body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "chat.completion"
    assert [r["state"] for r in up.replicas("sleepy")] == ["ready"]
    assert gateway_metric(up, r'llmserve_activator_held_seconds_count\{service="sleepy"\}') == 1


def test_graph_routes_share_the_gateways_auth_limits_and_errors(up: Up) -> None:
    anonymous = httpx.post(f"{up.url}/v1/graphs/dogs", json={"instances": [SETOSA]}, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "Failed to process request"
    assert "API key" in anonymous.json()["cause"]
    exposed = httpx.post(f"{up.url}/v1/chat/completions", json={**CHAT, "model": "chat-graph"}, timeout=10)
    assert exposed.status_code == 401
    assert exposed.json()["error"]["code"] == "invalid_api_key"  # OpenAI's envelope on the OpenAI route
    unknown = post(up, "nope", {})
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "Failed to process request", "cause": "no InferenceGraph named 'nope'"}
    too_big = httpx.post(f"{up.url}/v1/graphs/dogs", content=b"x" * (11 * 1024 * 1024), headers=up.headers, timeout=30)
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "Failed to process request"
    wrong_method = httpx.get(f"{up.url}/v1/graphs/dogs", headers=up.headers, timeout=10)
    assert wrong_method.status_code == 405
    listed = httpx.get(f"{up.url}/v1/graphs", headers=up.headers, timeout=10).json()["graphs"]
    assert {"name": "chat", "path": "/v1/graphs/chat", "exposedAs": "chat-graph"} in listed
    assert sorted(g["name"] for g in listed) == sorted(GRAPHS)


def test_llmserve_get_shows_the_graphs(up: Up) -> None:
    status = up.admin()
    graphs = {g["name"]: g for g in status["graphs"]}
    assert set(graphs) == set(GRAPHS)
    assert graphs["chat"]["exposed_as"] == "chat-graph"
    assert graphs["dogs"]["ready"]
    assert graphs["dogs"]["services"] == [
        {"name": "iris", "ready_replicas": 1, "min_replicas": 1},
        {"name": "xgb", "ready_replicas": 1, "min_replicas": 1},
    ]
