"""The V2 runtime as its own process, called by real clients: tritonclient over HTTP (JSON and binary) and
gRPC, plain HTTP for spec conformance, bad input and concurrency (adaptive batching)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xgboost as xgb

from tests.conftest import REPO, SHARED_SPECS
from tests.support import v2_models
from tests.support.v2_models import TrainedModel
from tests.support.v2_runtime import RuntimeProcess, runtime_process
from tests.support.v2_schemas import V2Schemas


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedModel]:
    root = tmp_path_factory.mktemp("v2models")
    return {
        "iris": v2_models.sklearn_iris(root / "iris"),
        "xgb": v2_models.xgboost_iris(root / "xgb"),
        "lgbm": v2_models.lightgbm_regressor(root / "lgbm"),
    }


@pytest.fixture(scope="module")
def runtime(trained: dict[str, TrainedModel], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    log = tmp_path_factory.mktemp("logs") / "runtime.log"
    repository = tmp_path_factory.mktemp("repository")
    waiting = repository / "iris-wait"  # a model-repository entry with its own settings: waits 20 ms to batch
    shutil.copytree(trained["iris"].path, waiting)
    (waiting / "model-settings.json").write_text(json.dumps({"format": "sklearn", "max_latency_ms": 20}))
    args = [
        "--model-repository", str(repository),
        "--model", f"iris={trained['iris'].path}:sklearn",
        "--model", f"xgb={trained['xgb'].path}",
        "--model", f"lgbm={trained['lgbm'].path}:lightgbm",
        "--max-body-bytes", "200000",
    ]  # fmt: skip
    with runtime_process(args, log) as process:
        yield process


def test_tritonclient_http_json_and_binary(runtime: RuntimeProcess, trained: dict[str, TrainedModel]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=runtime.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("xgb")
    assert client.get_model_metadata("xgb")["platform"] == "xgboost"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for name, model in trained.items():
        x = model.x.astype(np.float32)
        expected = model.model.predict(xgb.DMatrix(x)) if name == "xgb" else model.model.predict(x)
        for binary in (False, True):
            inputs = [httpclient.InferInput("input-0", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary)]
            result = client.infer(name, inputs, outputs=outputs, request_id=f"{name}-{binary}")
            np.testing.assert_allclose(result.as_numpy("predict"), expected, rtol=1e-6)
            assert result.get_response()["id"] == f"{name}-{binary}"
        default = client.infer(name, inputs)  # no outputs named: tritonclient asks for binary_data_output
        np.testing.assert_allclose(default.as_numpy("predict"), expected, rtol=1e-6)
    client.close()


def test_tritonclient_grpc(runtime: RuntimeProcess, trained: dict[str, TrainedModel]) -> None:
    model = trained["iris"]
    expected = {"x": model.x.tolist(), "predict": model.model.predict(model.x.astype(np.float32)).tolist()}
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.tritonclient_grpc_check",
            runtime.grpc_target,
            "iris",
            json.dumps(expected),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "tritonclient grpc ok" in check.stdout


def test_conformance_and_bad_input_over_http(runtime: RuntimeProcess) -> None:
    schemas = V2Schemas.load(SHARED_SPECS / "open-inference-protocol" / "open_inference_rest.yaml")
    good = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    with httpx.Client(base_url=runtime.url, timeout=10) as http:
        schemas.check("metadata_server_response", http.get("/v2").json())
        schemas.check("metadata_model_response", http.get("/v2/models/lgbm").json())
        schemas.check("inference_response", http.post("/v2/models/iris/infer", json=good).json())
        bad = [
            ("/v2/models/iris/infer", b'{"inputs": [', 400),
            ("/v2/models/iris/infer", json.dumps({"inputs": [{**good["inputs"][0], "datatype": "FP99"}]}), 400),
            ("/v2/models/iris/infer", json.dumps({"inputs": [{**good["inputs"][0], "shape": [2, 4]}]}), 400),
            ("/v2/models/iris/infer", json.dumps({"inputs": []}), 400),
            ("/v2/models/ghost/infer", json.dumps(good), 404),
            ("/v2/models/iris/infer", b"[" + b"1.0," * 60000 + b"1.0]", 413),
        ]
        for path, body, status in bad:
            response = http.post(path, content=body)
            assert response.status_code == status, (path, response.text)
            schemas.check("inference_error_response", response.json())
            assert response.json()["error"]
            assert http.post("/v2/models/iris/infer", json=good).status_code == 200  # still serving


def test_concurrent_requests_each_get_their_own_rows(runtime: RuntimeProcess, trained: dict[str, TrainedModel]) -> None:
    model = trained["iris"].model
    x_all, _ = v2_models.iris()

    async def one(http: httpx.AsyncClient, i: int, name: str) -> tuple[int, list[int]]:
        rows = x_all[i % 150 : i % 150 + 1 + i % 3]
        body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
        response = await http.post(f"/v2/models/{name}/infer", json=body)
        assert response.status_code == 200, response.text
        return i, response.json()["outputs"][0]["data"]

    async def burst(name: str) -> list[tuple[int, Any]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=runtime.url, timeout=30, limits=limits) as http:
            return await asyncio.gather(*(one(http, i, name) for i in range(96)))

    for name in ("iris", "iris-wait"):
        for i, labels in asyncio.run(burst(name)):
            assert labels == model.predict(x_all[i % 150 : i % 150 + 1 + i % 3]).tolist()
    metrics = httpx.get(f"{runtime.url}/metrics").text
    calls = _metric(metrics, 'llmserve_v2_batch_requests_count{model="iris-wait"}')
    merged = _metric(metrics, 'llmserve_v2_batch_requests_sum{model="iris-wait"}')
    assert merged == 96
    assert calls < 96  # with a 20 ms window, concurrent requests shared predict calls


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name))
    return float(line.rsplit(" ", 1)[1])


def test_runtime_imports_no_framework_until_a_model_needs_it(tmp_path: Path) -> None:
    code = (
        "import sys, llmserve.runtimes.server, gateway.app\n"
        "names = ('sklearn', 'xgboost', 'lightgbm', 'joblib', 'boto3', 'tritonclient', 'grpc')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
