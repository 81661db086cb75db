"""InferenceGraphs over real HTTP: the graph app with a direct HTTP step caller, in front of a real V2 runtime
process (scikit-learn and XGBoost iris models) and simulated vLLM workers (real processes)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.graph.http_caller import ServiceAddress
from tests.support.graph_services import SimProcess, graph_of, graph_server, sim_process
from tests.support.servers import ServerThread
from tests.support.v2_models import sklearn_iris, xgboost_iris
from tests.support.v2_runtime import RuntimeProcess, runtime_process
from tests.support.waiting import eventually

SETOSA = [5.1, 3.5, 1.4, 0.2]  # class 0
VIRGINICA = [6.2, 3.4, 5.4, 2.3]  # class 2


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("graph-models")
    sk = sklearn_iris(root / "iris")
    xg = xgboost_iris(root / "xgb")
    args = ["--model", f"iris={sk.path}:sklearn", "--model", f"xgb={xg.path}:xgboost"]
    with runtime_process(args, root / "runtime.log") as process:
        yield process


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    log = tmp_path_factory.mktemp("graph-sim") / "sim.log"
    with sim_process("llm", log, "--speed", "10") as sim:
        yield sim


@pytest.fixture(scope="module")
def services(runtime: RuntimeProcess, llm: SimProcess) -> dict[str, ServiceAddress]:
    return {
        "iris": ServiceAddress(runtime.url, "iris", "v2"),
        "xgb": ServiceAddress(runtime.url, "xgb", "v2"),
        "missing": ServiceAddress(runtime.url, "no-such-model", "v2"),
        "llm": ServiceAddress(llm.url, "llm", "openai"),
    }


def in_flight(sim: SimProcess) -> float:
    """Requests the worker holds: running, or waiting to be scheduled (a first frame may precede scheduling)."""
    return sim.metric("num_requests_running") + sim.metric("num_requests_waiting")


def post(server: ServerThread, graph: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/graphs/{graph}", json=body, timeout=30)


def seq(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Sequence", "steps": list(steps)}}


def test_sequence_condition_met_and_not_met(services: dict[str, ServiceAddress]) -> None:
    g = graph_of("dogs", seq({"serviceName": "iris"}, {"serviceName": "xgb", "condition": "predictions.#(==0)"}))
    with graph_server([g], services) as server:
        met = post(server, "dogs", {"instances": [SETOSA]})
        not_met = post(server, "dogs", {"instances": [VIRGINICA]})
    assert met.status_code == 200
    (probabilities,) = met.json()["predictions"]
    assert len(probabilities) == 3  # the XGBoost step ran: class probabilities
    assert probabilities[0] > 0.5
    assert (not_met.status_code, not_met.json()) == (200, {"predictions": [2]})  # iris's own answer


def test_response_feeds_the_next_step_and_v2_bodies_flow(services: dict[str, ServiceAddress]) -> None:
    v2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": SETOSA}]}
    g = graph_of("chain", seq({"serviceName": "xgb"}, {"serviceName": "iris", "data": "$response"}))
    with graph_server([g], services) as server:
        answer = post(server, "chain", v2)
    # xgb answered a V2 response; iris was sent it ($response) at V1 :predict, which refuses it (no instances)
    assert answer.status_code == 400
    assert "instances" in answer.json()["error"]
    g = graph_of("v2", seq({"serviceName": "iris"}))
    with graph_server([g], services) as server:
        answer = post(server, "v2", v2)
    assert answer.status_code == 200
    assert answer.json()["outputs"][0]["data"] == [0]


def test_map_predictions_to_instances_over_real_models(services: dict[str, ServiceAddress]) -> None:
    step = {"serviceName": "iris", "data": "$response", "mapPredictionsToInstances": True, "dependency": "Hard"}
    g = graph_of("mapped", seq({"serviceName": "xgb"}, step))
    with graph_server([g], services) as server:
        answer = post(server, "mapped", {"instances": [SETOSA]})
    # xgb's predictions (3 class probabilities per row) become iris's instances: 3 features where 4 are needed
    assert answer.status_code == 400
    assert "feature" in answer.json()["error"]


@pytest.mark.parametrize(("dependency", "expected"), [("Hard", 404), ("Soft", 200)])
def test_hard_and_soft_failures(services: dict[str, ServiceAddress], dependency: str, expected: int) -> None:
    g = graph_of("deps", seq({"serviceName": "missing", "dependency": dependency}, {"serviceName": "iris"}))
    with graph_server([g], services) as server:
        answer = post(server, "deps", {"instances": [SETOSA]})
    assert answer.status_code == expected
    if dependency == "Hard":
        assert "no-such-model" in answer.json()["error"]  # the failing step's own body
    else:
        assert answer.json() == {"predictions": [0]}


SWITCH = {
    "root": {
        "routerType": "Switch",
        "steps": [
            {"serviceName": "xgb", "condition": '[@this].#(model=="xgb")'},
            {"serviceName": "iris", "condition": "instances"},
        ],
    }
}


def test_switch_first_match_and_no_match(services: dict[str, ServiceAddress]) -> None:
    with graph_server([graph_of("pick", SWITCH)], services) as server:
        to_xgb = post(server, "pick", {"model": "xgb", "instances": [SETOSA]})
        to_iris = post(server, "pick", {"model": "sk", "instances": [SETOSA]})
        none = post(server, "pick", {"rows": [SETOSA]})
    assert len(to_xgb.json()["predictions"][0]) == 3
    assert to_iris.json() == {"predictions": [0]}
    assert none.status_code == 404
    assert none.json() == {
        "error": "Failed to process request",
        "cause": "None of the routes matched with the switch condition",
    }


def test_ensemble_merge_and_hard_failure(services: dict[str, ServiceAddress]) -> None:
    steps = [{"serviceName": "iris", "name": "sklearn"}, {"serviceName": "xgb"}]
    merged = graph_of("both", {"root": {"routerType": "Ensemble", "steps": steps}})
    failing = graph_of(
        "broken",
        {"root": {"routerType": "Ensemble", "steps": [*steps, {"serviceName": "missing", "dependency": "Hard"}]}},
    )
    with graph_server([merged, failing], services) as server:
        answer = post(server, "both", {"instances": [VIRGINICA]})
        broken = post(server, "broken", {"instances": [VIRGINICA]})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"sklearn", "1"}
    assert body["sklearn"] == {"predictions": [2]}
    assert len(body["1"]["predictions"][0]) == 3
    assert broken.status_code == 404
    assert "no-such-model" in broken.json()["error"]


def test_splitter_distribution_over_2000_requests(services: dict[str, ServiceAddress]) -> None:
    steps = [{"serviceName": "iris", "weight": 20}, {"serviceName": "xgb", "weight": 80}]
    g = graph_of("split", {"root": {"routerType": "Splitter", "steps": steps}})
    picks = {"iris": 0, "xgb": 0}
    with graph_server([g], services, pick=random.Random(2026).randrange) as server, httpx.Client() as client:
        for _ in range(2000):
            answer = client.post(f"{server.url}/v1/graphs/split", json={"instances": [SETOSA]}, timeout=30)
            assert answer.status_code == 200
            picks["iris" if answer.json() == {"predictions": [0]} else "xgb"] += 1
    assert abs(picks["iris"] / 2000 - 0.20) <= 0.03
    assert abs(picks["xgb"] / 2000 - 0.80) <= 0.03


CHAT = {"model": "rag", "messages": [{"role": "user", "content": "Tell me a long story."}]}
STREAMING = seq({"serviceName": "llm", "name": "draft"}, {"serviceName": "llm", "name": "answer", "stream": True})


def test_the_last_step_streams_before_the_worker_finishes(services: dict[str, ServiceAddress], llm: SimProcess) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 60, "ignore_eos": True}
    with graph_server([graph_of("chat", STREAMING)], services) as server, httpx.Client() as client:
        with client.stream("POST", f"{server.url}/v1/graphs/chat", json=body, timeout=60) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            lines = answer.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert '"delta"' in first
            assert in_flight(llm) == 1  # the worker is still generating the answer
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert len(rest) >= 60


def test_a_whole_answer_when_the_client_does_not_stream(services: dict[str, ServiceAddress]) -> None:
    with graph_server([graph_of("chat", STREAMING)], services) as server:
        answer = post(server, "chat", {**CHAT, "max_tokens": 5})
    assert answer.status_code == 200
    assert answer.json()["object"] == "chat.completion"
    assert answer.json()["model"] == "llm"  # the step was sent the service's model name


def test_client_disconnect_aborts_the_streaming_step(services: dict[str, ServiceAddress], llm: SimProcess) -> None:
    before = llm.metric("generation_tokens_total")
    body = {**CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True}
    g = graph_of("chat", seq({"serviceName": "llm", "stream": True}))
    with graph_server([g], services) as server:
        with httpx.Client() as client, client.stream("POST", f"{server.url}/v1/graphs/chat", json=body) as answer:
            lines = answer.iter_lines()  # held: dropping httpx's line iterator would close the response already
            next(line for line in lines if line.startswith("data: "))
            assert in_flight(llm) == 1
        assert eventually(lambda: in_flight(llm) == 0, within_s=10)
    assert llm.metric("generation_tokens_total") - before < 1000  # stopped long before its 2000 tokens


def test_an_ensemble_asked_to_stream_is_refused(services: dict[str, ServiceAddress]) -> None:
    g = graph_of("fan", {"root": {"routerType": "Ensemble", "steps": [{"serviceName": "llm"}]}})
    with graph_server([g], services) as server:
        answer = post(server, "fan", {**CHAT, "stream": True})
    assert answer.status_code == 400
    assert "cannot be streamed" in answer.json()["cause"]
