"""The REST surface in-process: every OIP endpoint validated against the spec's schemas, V1, the repository
extension, Triton's binary tensor extension, and every kind of bad request answered with a 4xx envelope."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.support.v2_models import TrainedModel
from tests.support.v2_schemas import V2Schemas
from tests.unit.runtimes.conftest import RuntimeClient, settings_for

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]]


def iris_request(rows: list[list[float]] = ROWS, **extra: Any) -> dict[str, Any]:
    flat = [v for row in rows for v in row]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": flat}], **extra}


@pytest.fixture
async def client(make_runtime: Callable[..., Any], iris_model: TrainedModel) -> RuntimeClient:
    versioned = settings_for(iris_model).model_copy(update={"name": "iris-v", "version": "3"})
    return await make_runtime([settings_for(iris_model), versioned], max_body_bytes=64 * 1024)


async def test_every_spec_endpoint_conforms(client: RuntimeClient, v2_schemas: V2Schemas) -> None:
    spec_paths = set(v2_schemas.paths())
    assert spec_paths == {
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/",
        "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}",
        "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/ready",
        "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer",
    }
    http = client.http
    assert (await http.get("/v2/health/live")).status_code == 200
    assert (await http.get("/v2/health/ready")).status_code == 200
    for path in ("/v2", "/v2/"):
        response = await http.get(path)
        assert response.status_code == 200
        v2_schemas.check("metadata_server_response", response.json())
    for base in ("/v2/models/iris", "/v2/models/iris-v/versions/3"):
        meta = await http.get(base)
        assert meta.status_code == 200
        v2_schemas.check("metadata_model_response", meta.json())
        assert (await http.get(f"{base}/ready")).status_code == 200
        infer = await http.post(f"{base}/infer", json=iris_request(id="r-1"))
        assert infer.status_code == 200
        v2_schemas.check("inference_response", infer.json())
        assert infer.json()["id"] == "r-1"
    meta = (await http.get("/v2/models/iris-v/versions/3")).json()
    assert meta["versions"] == ["3"]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    versioned = (await http.post("/v2/models/iris-v/versions/3/infer", json=iris_request())).json()
    assert versioned["model_version"] == "3"


async def test_predictions_and_outputs(client: RuntimeClient, iris_model: TrainedModel) -> None:
    x = np.array(ROWS)
    body = (await client.infer("iris", iris_request())).json()
    assert body["outputs"][0]["data"] == iris_model.model.predict(x).tolist()
    request = iris_request(outputs=[{"name": "predict_proba"}, {"name": "predict"}])
    both = (await client.infer("iris", request)).json()["outputs"]
    assert [o["name"] for o in both] == ["predict_proba", "predict"]
    assert both[0]["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(both[0]["data"], (2, 3)), iris_model.model.predict_proba(x))
    nested = iris_request()
    nested["inputs"][0]["data"] = ROWS  # natural multi-dimensional form
    assert (await client.infer("iris", nested)).json()["outputs"][0]["data"] == body["outputs"][0]["data"]
    columns = {
        "inputs": [
            {"name": f"f{i}", "shape": [2], "datatype": "FP32", "data": [row[i] for row in ROWS]} for i in range(4)
        ]
    }
    assert (await client.infer("iris", columns)).json()["outputs"][0]["data"] == body["outputs"][0]["data"]


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v2/models/nope/infer", iris_request(), 404, "'nope' is not served"),
        ("/v2/models/iris-v/versions/9/infer", iris_request(), 404, "no version '9'"),
        ("/v2/models/iris/versions/1/infer", iris_request(), 404, "no version '1'"),
        ("/v2/models/iris/infer", {"inputs": []}, 400, "non-empty list"),
        ("/v2/models/iris/infer", {"id": 1, **iris_request()}, 400, "'id' must be a string"),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]}]},
            400,
            "unknown datatype 'FP99'",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]},
            400,
            "does not fit datatype FP32",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ["1", "2", "3", "4"]}]},
            400,
            "not strings",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]},
            400,
            "needs numbers, not BYTES",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            400,
            "shape [2, 4] needs 8 elements, but the data has 4",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            400,
            "expects 4 features per row, got 3",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "UINT8", "data": [1, 2, 3, 400]}]},
            400,
            "does not fit datatype UINT8",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32"}]},
            400,
            "'data'",
        ),
        ("/v2/models/iris/infer", {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, 400, "name"),
        ("/v2/models/iris/infer", iris_request(outputs=[{"name": "nope"}]), 400, "has no output 'nope'"),
        ("/v2/models/iris/infer", [1, 2], 400, "must be a JSON object"),
        ("/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}, 404, "'nope' is not served"),
        ("/v1/models/iris:predict", {"instances": "x"}, 400, "non-empty list"),
        ("/v1/models/iris:predict", {"instances": [[1, 2], [3]]}, 400, "rows of equal length"),
    ],
)
async def test_bad_requests_are_4xx_with_a_message(
    client: RuntimeClient, path: str, body: Any, status: int, fragment: str
) -> None:
    response = await client.http.post(path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    # ...and the server keeps serving
    assert (await client.infer("iris", iris_request())).status_code == 200


async def test_transport_level_errors(client: RuntimeClient, v2_schemas: V2Schemas) -> None:
    http = client.http
    malformed = await http.post(
        "/v2/models/iris/infer", content=b'{"inputs": [', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert "Malformed JSON" in malformed.json()["error"]
    v2_schemas.check("inference_error_response", malformed.json())
    big = iris_request([[1.0, 2.0, 3.0, 4.0]] * 6000)
    oversized = await http.post("/v2/models/iris/infer", json=big)
    assert oversized.status_code == 413
    assert "limit of 65536 bytes" in oversized.json()["error"]
    assert (await http.get("/v2/models/iris/infer")).status_code == 405
    assert (await http.post("/v2/health/live")).status_code == 405
    assert (await http.get("/v2/nothing")).status_code == 404
    assert (await http.get("/elsewhere")).status_code == 404
    assert (await http.get("/v2/models/nope")).status_code == 404
    assert (await http.get("/v2/models/nope/ready")).status_code == 404
    gz = await http.post(
        "/v2/models/iris/infer",
        content=gzip.compress(json.dumps(iris_request()).encode()),
        headers={"content-encoding": "gzip"},
    )
    assert gz.status_code == 200
    bomb = await http.post(
        "/v2/models/iris/infer", content=gzip.compress(b" " * 200_000), headers={"content-encoding": "gzip"}
    )
    assert bomb.status_code == 413


def binary_request(x: np.ndarray[Any, Any], outputs: list[dict[str, Any]] | None = None) -> tuple[bytes, str]:
    raw = x.astype("<f4").tobytes()
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if outputs is None:
        header["parameters"] = {"binary_data_output": True}
    else:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head + raw, str(len(head))


async def test_binary_tensor_extension(client: RuntimeClient, iris_model: TrainedModel) -> None:
    x = np.array(ROWS, dtype=np.float32)
    body, length = binary_request(x)
    response = await client.http.post(
        "/v2/models/iris/infer", content=body, headers={"inference-header-content-length": length}
    )
    assert response.status_code == 200
    size = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:size])
    out = header["outputs"][0]
    assert "data" not in out
    labels = np.frombuffer(response.content[size:], dtype="<i8")
    assert out["parameters"]["binary_data_size"] == labels.nbytes
    assert labels.tolist() == iris_model.model.predict(x).tolist()
    # mixed: one output raw, one as JSON
    body, length = binary_request(x, [{"name": "predict", "parameters": {"binary_data": False}},
                                      {"name": "predict_proba", "parameters": {"binary_data": True}}])  # fmt: skip
    mixed = await client.http.post(
        "/v2/models/iris/infer", content=body, headers={"inference-header-content-length": length}
    )
    size = int(mixed.headers["inference-header-content-length"])
    outputs = json.loads(mixed.content[:size])["outputs"]
    assert outputs[0]["data"] == labels.tolist()
    proba = np.frombuffer(mixed.content[size:], dtype="<f8").reshape(2, 3)
    np.testing.assert_allclose(proba, iris_model.model.predict_proba(x))
    # sizes that lie
    for bad_length in ("x", "0", str(len(body) + 1)):
        wrong = await client.http.post(
            "/v2/models/iris/infer", content=body, headers={"inference-header-content-length": bad_length}
        )
        assert wrong.status_code == 400
    short = await client.http.post(
        "/v2/models/iris/infer", content=body[:-4], headers={"inference-header-content-length": length}
    )
    assert short.status_code == 400
    assert "runs past the end" in short.json()["error"]
    extra = await client.http.post(
        "/v2/models/iris/infer", content=body + b"xx", headers={"inference-header-content-length": length}
    )
    assert "unclaimed" in extra.json()["error"]


async def test_v1_protocol(client: RuntimeClient, iris_model: TrainedModel) -> None:
    http = client.http
    assert (await http.get("/v1/models")).json() == {"models": ["iris", "iris-v"]}
    assert (await http.get("/v1/models/iris")).json() == {"name": "iris", "ready": True}
    predicted = await http.post("/v1/models/iris:predict", json={"instances": ROWS})
    assert predicted.json() == {"predictions": iris_model.model.predict(np.array(ROWS)).tolist()}
    explained = (await http.post("/v1/models/iris:explain", json={"instances": ROWS})).json()["explanations"]
    assert np.asarray(explained).shape == (2, 3, 5)


async def test_repository_extension_and_metrics(client: RuntimeClient) -> None:
    http = client.http
    index = (await http.post("/v2/repository/index")).json()
    assert {"name": "iris", "state": "READY"} in index
    assert (await http.post("/v2/repository/models/iris/unload")).status_code == 200
    unloaded = await client.infer("iris", iris_request())
    assert unloaded.status_code == 503
    assert "unloaded" in unloaded.json()["error"]
    assert (await http.get("/v2/models/iris/ready")).status_code == 503
    assert (await http.get("/v2/health/ready")).status_code == 200  # an explicit unload is not a failure
    assert (await http.post("/v2/repository/models/iris/load")).status_code == 200
    assert (await client.infer("iris", iris_request())).status_code == 200
    assert (await http.post("/v2/repository/models/ghost/load")).status_code == 404
    metrics = (await http.get("/metrics")).text
    assert 'llmserve_v2_model_unloads_total{model="iris",reason="api"} 1.0' in metrics
    assert 'llmserve_v2_model_loads_total{model="iris"} 2.0' in metrics
    assert 'llmserve_v2_inference_requests_total{model="iris",status="503"} 1.0' in metrics


async def test_bytes_roundtrip_in_binary(client: RuntimeClient) -> None:
    """BYTES inputs in the binary form decode as length-prefixed elements (and are refused by numeric models)."""
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz", b"q"))
    head = json.dumps(
        {"inputs": [{"name": "s", "shape": [1, 4], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    response = await client.http.post(
        "/v2/models/iris/infer", content=head + raw, headers={"inference-header-content-length": str(len(head))}
    )
    assert response.status_code == 400
    assert "needs numbers, not BYTES" in response.json()["error"]
