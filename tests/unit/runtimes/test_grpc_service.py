"""inference.GRPCInferenceService in-process over a real gRPC channel: typed and raw tensors, metadata,
readiness, and errors mapped to gRPC status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb
from llmserve.runtimes.grpc_service import SERVICE, InferenceServicer, generic_handler
from tests.support.v2_models import TrainedModel
from tests.unit.runtimes.conftest import settings_for


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def call(self, method: str, request: Any, response_type: Any) -> Any:
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return await stub(request, timeout=10)


@pytest.fixture
async def grpc_client(make_runtime: Callable[..., Any], iris_model: TrainedModel) -> AsyncIterator[Client]:
    runtime_client = await make_runtime([settings_for(iris_model, version="2")])
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((generic_handler(InferenceServicer(runtime_client.runtime.dataplane)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Client(channel)
    await server.stop(None)


async def test_health_and_metadata(grpc_client: Client) -> None:
    assert (await grpc_client.call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse)).live
    assert (await grpc_client.call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse)).ready
    ready = await grpc_client.call("ModelReady", pb.ModelReadyRequest(name="iris"), pb.ModelReadyResponse)
    assert ready.ready
    ghost = await grpc_client.call("ModelReady", pb.ModelReadyRequest(name="ghost"), pb.ModelReadyResponse)
    assert not ghost.ready
    server = await grpc_client.call("ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
    assert "binary_tensor_data" in server.extensions
    meta = await grpc_client.call(
        "ModelMetadata", pb.ModelMetadataRequest(name="iris", version="2"), pb.ModelMetadataResponse
    )
    assert meta.platform == "sklearn"
    assert list(meta.versions) == ["2"]
    assert list(meta.inputs[0].shape) == [-1, 4]


async def test_infer_typed_and_raw(grpc_client: Client, iris_model: TrainedModel) -> None:
    x = iris_model.x.astype(np.float32)
    expected = iris_model.model.predict(x).tolist()
    typed = pb.ModelInferRequest(model_name="iris", id="t1")
    tensor = typed.inputs.add(name="input-0", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    typed.outputs.add(name="predict")
    typed.outputs.add(name="predict_proba")
    response = await grpc_client.call("ModelInfer", typed, pb.ModelInferResponse)
    assert response.id == "t1"
    assert list(response.outputs[0].contents.int64_contents) == expected
    assert list(response.outputs[1].shape) == [len(x), 3]
    assert not response.raw_output_contents

    raw = pb.ModelInferRequest(model_name="iris", model_version="2")
    raw.inputs.add(name="input-0", datatype="FP32", shape=list(x.shape))
    raw.raw_input_contents.append(x.tobytes())
    response = await grpc_client.call("ModelInfer", raw, pb.ModelInferResponse)
    assert response.model_version == "2"
    assert np.frombuffer(response.raw_output_contents[0], dtype="<i8").tolist() == expected


@pytest.mark.parametrize(
    ("build", "code", "fragment"),
    [
        (lambda r: setattr(r, "model_name", "ghost"), grpc.StatusCode.NOT_FOUND, "not served"),
        (lambda r: r.inputs[0].contents.fp32_contents.pop(), grpc.StatusCode.INVALID_ARGUMENT, "needs 4 elements"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP99"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP16"), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (lambda r: r.raw_input_contents.append(b"12"), grpc.StatusCode.INVALID_ARGUMENT, "needs 16 bytes"),
    ],
)
async def test_errors_map_to_status_codes(
    grpc_client: Client, build: Callable[[pb.ModelInferRequest], object], code: grpc.StatusCode, fragment: str
) -> None:
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    build(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_client.call("ModelInfer", request, pb.ModelInferResponse)
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")
