"""V2 traffic through the gateway: real runtime processes behind a real gateway on real ports (REST and gRPC),
called by real clients (tritonclient http JSON/binary and grpc, plain httpx as curl would); responses checked
against the Open Inference Protocol's OpenAPI document."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from gateway.app import Gateway as GatewayParts
from gateway.app import build_gateway
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb
from llmserve.workers.processes import free_port
from tests.conftest import REPO, SHARED_SPECS
from tests.support import v2_models
from tests.support.servers import ServerThread, serving
from tests.support.v2_models import TrainedModel
from tests.support.v2_runtime import RuntimeProcess, runtime_processes
from tests.support.v2_schemas import V2Schemas
from tests.support.waiting import eventually

KEY = "v2-gateway-key"
ROW = [5.1, 3.5, 1.4, 0.2]
GOOD = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


@pytest.fixture(scope="module")
def schemas() -> V2Schemas:
    return V2Schemas.load(SHARED_SPECS / "open-inference-protocol" / "open_inference_rest.yaml")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return v2_models.sklearn_iris(tmp_path_factory.mktemp("v2gw") / "iris")


@pytest.fixture(scope="module")
def runtimes(iris: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RuntimeProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    args = ["--model", f"iris={iris.path}:sklearn", "--model", f"cold={iris.path}:sklearn"]
    with runtime_processes([(args, logs / "runtime-0.log"), (args, logs / "runtime-1.log")]) as processes:
        yield processes


@dataclass
class Gateway:
    server: ServerThread
    parts: GatewayParts
    registry: EndpointRegistry
    grpc_target: str

    @property
    def url(self) -> str:
        return self.server.url

    def on_loop(self, fn: Any, *args: Any) -> Any:
        return self.server.call(fn, *args)


@contextmanager
def gateway(settings: GatewaySettings, runtimes: list[RuntimeProcess], *extra: ServiceInfo) -> Iterator[Gateway]:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="iris", model_name="iris", protocol="v2"))
    registry.declare_service(ServiceInfo(name="cold", model_name="cold", protocol="v2", min_replicas=0))
    registry.declare_service(ServiceInfo(name="chat", model_name="chat", min_replicas=0))  # an LLM service
    for info in extra:
        registry.declare_service(info)
    for i, runtime in enumerate(runtimes):
        registry.publish(Endpoint("iris", f"iris-{i}", runtime.url, runtime.grpc_target))
    parts = build_gateway(settings, registry)
    with serving(parts.app) as server:
        yield Gateway(server, parts, registry, f"127.0.0.1:{settings.grpc_port}")


@pytest.fixture(scope="module")
def gw(runtimes: list[RuntimeProcess]) -> Iterator[Gateway]:
    settings = GatewaySettings(grpc_port=free_port(), max_body_bytes=100_000, activator_timeout_s=30)
    with gateway(settings, runtimes) as g:
        yield g


@pytest.fixture(scope="module")
def keyed(runtimes: list[RuntimeProcess]) -> Iterator[Gateway]:
    """API keys on, a short activator deadline, and a V2 service that should be up but has no replica."""
    settings = GatewaySettings(grpc_port=free_port(), api_keys=(SecretStr(KEY),), activator_timeout_s=0.5)
    with gateway(settings, runtimes, ServiceInfo(name="needed", model_name="needed", protocol="v2")) as g:
        yield g


AUTH = {"authorization": f"Bearer {KEY}"}


def grpc_call(target: str, method: str, request: Any, response_type: Any, key: str | None = None) -> Any:
    """A call with our own generated messages (tritonclient's proto cannot live in this process)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        metadata = (("authorization", f"Bearer {key}"),) if key else None
        return call(request, metadata=metadata, timeout=30)


def grpc_infer(target: str, model: str, key: str | None = None) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model, id="g-1")
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW)
    response: pb.ModelInferResponse = grpc_call(target, "ModelInfer", request, pb.ModelInferResponse, key)
    return response


def grpc_error(fn: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args)
    return caught.value


def test_server_routes_are_answered_by_the_gateway(gw: Gateway, keyed: Gateway, schemas: V2Schemas) -> None:
    for path in ("/v2", "/v2/"):
        metadata = httpx.get(f"{gw.url}{path}").json()
        schemas.check("metadata_server_response", metadata)
        assert metadata["name"] == "llmserve"
        assert "binary_tensor_data" in metadata["extensions"]
    assert httpx.get(f"{gw.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200  # iris is up; cold may be at zero
    not_ready = httpx.get(f"{keyed.url}/v2/health/ready", headers=AUTH)
    assert not_ready.status_code == 503
    assert "needed" in not_ready.json()["error"]
    wrong = httpx.post(f"{gw.url}/v2/health/live")
    assert wrong.status_code == 405
    assert isinstance(wrong.json()["error"], str)
    assert grpc_call(gw.grpc_target, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    assert grpc_call(gw.grpc_target, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    ready = grpc_call(keyed.grpc_target, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, KEY)
    assert not ready.ready
    meta = grpc_call(gw.grpc_target, "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
    assert meta.name == "llmserve"
    assert "kserve_v1" in meta.extensions


def test_model_routes_are_forwarded_unchanged(gw: Gateway, iris: TrainedModel, schemas: V2Schemas) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        schemas.check("metadata_model_response", http.get("/v2/models/iris").json())
        assert http.get("/v2/models/iris/ready").status_code == 200
        answer = http.post("/v2/models/iris/infer", json={**GOOD, "id": "r-1"}, headers={"x-request-id": "abc"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "abc"
        schemas.check("inference_response", answer.json())
        assert answer.json()["id"] == "r-1"
        assert answer.json()["outputs"][0]["data"] == iris.model.predict([ROW]).tolist()
        explained = http.post("/v2/models/iris/explain", json=GOOD).json()
        assert explained["outputs"][0]["name"] == "contributions"
        # curl-style: a gzip body, with its content-encoding passed on
        packed = gzip.compress(json.dumps(GOOD).encode())
        zipped = http.post(
            "/v2/models/iris/infer",
            content=packed,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert zipped.status_code == 200, zipped.text
        failures = [
            ("POST", "/v2/models/iris/infer", b'{"inputs": [', 400),  # the runtime's answer, relayed
            ("POST", "/v2/models/iris/versions/7/infer", json.dumps(GOOD).encode(), 404),  # runtime: no version 7
            ("POST", "/v2/models/ghost/infer", json.dumps(GOOD).encode(), 404),
            ("POST", "/v2/models/chat/infer", json.dumps(GOOD).encode(), 404),  # an LLM service is not V2
            ("POST", "/v2/models/iris/infer", b"[" + b"1.0," * 40000 + b"1.0]", 413),  # the gateway's limit
            ("POST", "/v2/repository/index", b"", 404),  # per-replica API: not forwarded
            ("GET", "/v2/models/iris/infer", b"", 405),
            ("POST", "/v2/models/iris/stats", b"", 404),
        ]
        for method, path, body, status in failures:
            response = http.request(method, path, content=body)
            assert response.status_code == status, (path, response.text)
            schemas.check("inference_error_response", response.json())
        assert http.post("/v2/models/iris/infer", json=GOOD).status_code == 200  # still serving


def test_tritonclient_http_json_binary_and_gzip(gw: Gateway, iris: TrainedModel) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=gw.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("iris")
        assert client.get_model_metadata("iris")["platform"] == "sklearn"
        assert client.get_server_metadata()["name"] == "llmserve"
        x = iris.x.astype(np.float32)
        expected = iris.model.predict(x)
        for binary in (False, True):
            inputs = [httpclient.InferInput("input-0", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary)]
            for compression in (None, "gzip"):
                result = client.infer(
                    "iris", inputs, outputs=outputs, request_id=f"t-{binary}", request_compression_algorithm=compression
                )
                np.testing.assert_array_equal(result.as_numpy("predict"), expected)
                assert result.get_response()["id"] == f"t-{binary}"
        default = client.infer("iris", inputs)  # tritonclient then asks for binary outputs
        np.testing.assert_array_equal(default.as_numpy("predict"), expected)
    finally:
        client.close()


def test_tritonclient_grpc_through_the_gateway(gw: Gateway, iris: TrainedModel) -> None:
    expected = {"x": iris.x.tolist(), "predict": iris.model.predict(iris.x.astype(np.float32)).tolist()}
    check = subprocess.run(
        [sys.executable, "-m", "tests.support.tritonclient_grpc_check", gw.grpc_target, "iris", json.dumps(expected),
         "llmserve"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "tritonclient grpc ok" in check.stdout


def test_kserve_v1_predict_explain_and_status(gw: Gateway, iris: TrainedModel) -> None:
    instances = iris.x[:3].tolist()
    predicted = httpx.post(f"{gw.url}/v1/models/iris:predict", json={"instances": instances})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json() == {"predictions": iris.model.predict(iris.x[:3]).tolist()}
    explained = httpx.post(f"{gw.url}/v1/models/iris:explain", json={"instances": instances}).json()
    assert len(explained["explanations"]) == 3
    assert httpx.get(f"{gw.url}/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert httpx.get(f"{gw.url}/v1/models/cold").json() == {"name": "cold", "ready": False}  # at zero
    assert httpx.get(f"{gw.url}/v1/models/chat").json()["object"] == "model"  # LLMs keep OpenAI's card
    assert [m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]] == ["chat"]
    for name in ("ghost", "chat"):
        missing = httpx.post(f"{gw.url}/v1/models/{name}:predict", json={"instances": instances})
        assert missing.status_code == 404
        assert isinstance(missing.json()["error"], str)
    bad = httpx.post(f"{gw.url}/v1/models/iris:predict", json={"instances": "nope"})
    assert bad.status_code == 400
    assert isinstance(bad.json()["error"], str)


def _served(runtime: RuntimeProcess) -> float:
    text = httpx.get(f"{runtime.url}/metrics").text
    found = re.search(r'llmserve_v2_inference_requests_total\{model="iris",status="200"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_requests_are_spread_counted_and_metered(gw: Gateway, runtimes: list[RuntimeProcess]) -> None:
    before = [_served(r) for r in runtimes]
    arrived = gw.on_loop(lambda: gw.parts.ledger.demand("iris").arrived)
    with httpx.Client(base_url=gw.url, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        rest = list(pool.map(lambda _: http.post("/v2/models/iris/infer", json=GOOD).status_code, range(24)))
        grpc_answers = list(pool.map(lambda _: grpc_infer(gw.grpc_target, "iris"), range(8)))
        assert http.post("/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 200
        assert http.get("/v2/models/iris/ready").status_code == 200
        assert http.get("/v2/models/iris").status_code == 200
        assert http.post("/v2/models/iris/explain", json=GOOD).status_code == 200
        assert http.post("/v2/models/ghost/infer", json=GOOD).status_code == 404
    assert rest == [200] * 24
    assert all(a.outputs[0].contents.int64_contents == [0] for a in grpc_answers)
    served = [_served(r) - b for r, b in zip(runtimes, before, strict=True)]
    assert all(n >= 4 for n in served), served  # least-request, ties in turn: both replicas work
    assert sum(served) == 24 + 8 + 1 + 1  # infer, gRPC, :predict, explain
    demand = gw.on_loop(lambda: gw.parts.ledger.demand("iris"))
    assert demand.arrived - arrived == 24 + 8 + 4
    assert demand.in_flight == 0
    loads = gw.on_loop(lambda: [load.in_flight for load in gw.parts.ledger.loads.values()])
    assert loads
    assert all(n == 0 for n in loads)
    metrics = httpx.get(f"{gw.url}/metrics").text
    for route in ("v2_infer", "v2_explain", "v2_metadata", "v2_ready", "v1_predict", "grpc_infer"):
        labels = f'model="iris",revision="",route="{route}",service="iris",status="200"'
        assert f"llmserve_requests_total{{{labels}}}" in metrics, route
    unknown = 'model="__unknown__",revision="",route="v2_infer",service="",status="404"'
    assert f"llmserve_requests_total{{{unknown}}}" in metrics
    assert 'llmserve_request_duration_seconds_count{model="iris",route="v2_infer"}' in metrics
    assert 'llmserve_requests_in_flight{model="iris"} 0.0' in metrics


def test_api_keys_on_rest_and_grpc(keyed: Gateway) -> None:
    for method, path, body in [
        ("POST", "/v2/models/iris/infer", GOOD),
        ("GET", "/v2/health/live", None),
        ("POST", "/v1/models/iris:predict", {"instances": [ROW]}),
    ]:
        for headers in ({}, {"authorization": "Bearer wrong"}):
            denied = httpx.request(method, f"{keyed.url}{path}", json=body, headers=headers)
            assert denied.status_code == 401, path
            assert isinstance(denied.json()["error"], str)
            assert denied.headers["www-authenticate"] == "Bearer"
        assert httpx.request(method, f"{keyed.url}{path}", json=body, headers=AUTH).status_code == 200
    for call in (
        lambda: grpc_infer(keyed.grpc_target, "iris"),
        lambda: grpc_infer(keyed.grpc_target, "iris", "wrong"),
        lambda: grpc_call(keyed.grpc_target, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse),
    ):
        assert grpc_error(call).code() is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_infer(keyed.grpc_target, "iris", KEY).outputs[0].name == "predict"


def test_held_at_zero_then_answered_once_a_replica_is_published(gw: Gateway, runtimes: list[RuntimeProcess]) -> None:
    woken: list[str] = []
    gw.on_loop(gw.registry.on_wake, woken.append)

    def held() -> int:
        return int(gw.on_loop(gw.parts.activator.held, "cold"))

    try:
        with ThreadPoolExecutor(2) as pool:
            rest = pool.submit(httpx.post, f"{gw.url}/v2/models/cold/infer", json=GOOD, timeout=30)
            over_grpc = pool.submit(grpc_infer, gw.grpc_target, "cold")
            assert eventually(lambda: held() == 2, 10)
            assert "cold" in woken  # the controller is asked for a replica at once
            gw.on_loop(gw.registry.publish, Endpoint("cold", "cold-0", runtimes[0].url, runtimes[0].grpc_target))
            assert rest.result().status_code == 200
            assert rest.result().json()["model_name"] == "cold"
            assert over_grpc.result().model_name == "cold"
        assert held() == 0
    finally:
        gw.on_loop(gw.registry.unpublish, "cold", "cold-0")


def test_no_replica_by_the_deadline_is_503_with_retry_after(keyed: Gateway, schemas: V2Schemas) -> None:
    answer = httpx.post(f"{keyed.url}/v2/models/cold/infer", json=GOOD, headers=AUTH, timeout=10)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    schemas.check("inference_error_response", answer.json())
    v1 = httpx.post(f"{keyed.url}/v1/models/cold:predict", json={"instances": [ROW]}, headers=AUTH, timeout=10)
    assert v1.status_code == 503
    assert isinstance(v1.json()["error"], str)
    error = grpc_error(grpc_infer, keyed.grpc_target, "cold", KEY)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    unknown = grpc_error(grpc_infer, keyed.grpc_target, "ghost", KEY)
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    ghost = pb.ModelReadyRequest(name="ghost")  # polled, so answered like the runtime: not ready
    assert not grpc_call(keyed.grpc_target, "ModelReady", ghost, pb.ModelReadyResponse, KEY).ready
    assert keyed.on_loop(keyed.parts.activator.held, "cold") == 0


def test_an_unreachable_replica_is_skipped_and_its_channel_closed(gw: Gateway) -> None:
    dead = Endpoint("iris", "iris-dead", f"http://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    gw.on_loop(gw.registry.publish, dead)
    try:
        assert all(grpc_infer(gw.grpc_target, "iris").model_name == "iris" for _ in range(6))
        listed = gw.on_loop(gw.parts.endpoints.ready_endpoints, "iris")
        assert "iris-dead" not in [e.replica_id for e in listed]  # tried once, ejected
        assert "iris-dead" not in gw.on_loop(gw.parts.grpc.channels.replicas)  # and its channel closed
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            assert [http.post("/v2/models/iris/infer", json=GOOD).status_code for _ in range(9)] == [200] * 9
    finally:
        gw.on_loop(gw.registry.unpublish, "iris", "iris-dead")
    assert gw.on_loop(lambda: sum(load.in_flight for load in gw.parts.ledger.loads.values())) == 0


def test_a_client_gone_while_held_leaves_the_queue(gw: Gateway) -> None:
    gone = threading.Event()

    def impatient() -> None:
        try:
            httpx.post(f"{gw.url}/v2/models/cold/infer", json=GOOD, timeout=0.5)
        except httpx.ReadTimeout:
            gone.set()

    thread = threading.Thread(target=impatient)
    thread.start()
    thread.join(5)
    assert gone.is_set()
    assert eventually(lambda: gw.on_loop(gw.parts.activator.held, "cold") == 0)


def test_a_grpc_port_in_use_leaves_http_serving(gw: Gateway, runtimes: list[RuntimeProcess]) -> None:
    taken = int(gw.grpc_target.rsplit(":", 1)[1])
    with gateway(GatewaySettings(grpc_port=taken), runtimes) as second:
        assert second.parts.grpc is None  # logged as an error; HTTP goes on
        assert httpx.post(f"{second.url}/v2/models/iris/infer", json=GOOD).status_code == 200
    assert grpc_infer(gw.grpc_target, "iris").model_name == "iris"  # the port's owner still answers
