"""inference.GRPCInferenceService (open_inference_grpc.proto) over the shared DataPlane.

Tensors arrive either typed (`contents.fp32_contents`, ...) or raw (`raw_input_contents`, one entry per input,
little-endian; BYTES length-prefixed). Outputs go back the way inputs came: raw when the request used raw
contents (tritonclient always does, and reads only raw outputs), typed otherwise; FP16 and BF16 are always raw
(the proto has no field for them). ServingError statuses map to gRPC codes (400 INVALID_ARGUMENT, 404
NOT_FOUND, 503 UNAVAILABLE, ...), with the same message as REST.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import (
    DATATYPE_SIZES,
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    RequestedOutput,
    TensorMetadata,
)
from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb
from llmserve.runtimes.codecs import NUMPY_DTYPES, decode_raw, element_count, encode_raw
from llmserve.runtimes.dataplane import DataPlane

SERVICE = "inference.GRPCInferenceService"
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# datatype -> the InferTensorContents field that carries it (FP16 and BF16 have none: raw only)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Req = TypeVar("Req", bound=Message)
Res = TypeVar("Res", bound=Message)


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ServingError(400, f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs; give one per input.")
    if not message.inputs:
        raise ServingError(400, "'inputs' must be a non-empty list of tensors.")
    inputs = []
    for i, tensor in enumerate(message.inputs):
        datatype = tensor.datatype
        if datatype not in DATATYPE_SIZES:
            raise ServingError(400, f"Input '{tensor.name}': unknown datatype {datatype!r}.")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise ServingError(400, f"Input '{tensor.name}': shape dimensions must be non-negative.")
        data = decode_raw(tensor.name, datatype, shape, raw[i]) if raw else _decode_contents(tensor, datatype, shape)
        inputs.append(InferTensor(tensor.name, datatype, shape, data, _parameters(tensor.parameters)))
    return InferenceRequest(
        inputs=inputs,
        id=message.id or None,
        parameters=_parameters(message.parameters),
        outputs=[RequestedOutput(o.name, _parameters(o.parameters)) for o in message.outputs],
    )


def _decode_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, datatype: str, shape: list[int]
) -> np.ndarray[Any, Any]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise ServingError(400, f"Input '{tensor.name}': {datatype} must be sent in raw_input_contents.")
    values = getattr(tensor.contents, field)
    expected = element_count(shape)
    if len(values) != expected:
        raise ServingError(
            400, f"Input '{tensor.name}': shape {shape} needs {expected} elements, but the data has {len(values)}."
        )
    if datatype == "BYTES":
        array = np.empty(expected, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    except OverflowError as exc:
        raise ServingError(400, f"Input '{tensor.name}': data does not fit datatype {datatype} ({exc}).") from None


def encode_response(response: InferenceResponse, raw: bool) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version or "", id=response.id or ""
    )
    use_raw = raw or any(t.datatype not in _CONTENTS for t in response.outputs)
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if use_raw:
            message.raw_output_contents.append(encode_raw(tensor.data, tensor.datatype))
        elif tensor.datatype == "BYTES":
            out.contents.bytes_contents.extend(v if isinstance(v, bytes) else str(v).encode() for v in tensor.data.flat)
        else:
            getattr(out.contents, _CONTENTS[tensor.datatype]).extend(tensor.data.reshape(-1).tolist())
    return message


def _tensor_metadata(tensors: tuple[TensorMetadata, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in tensors]


class InferenceServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            ready = self.dataplane.model_ready(request.name, request.version or None)
        except ServingError:  # unknown model or version: not ready (clients ask this to poll)
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        server = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=server.name, version=server.version, extensions=server.extensions)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = await self.dataplane.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=_tensor_metadata(meta.inputs),
            outputs=_tensor_metadata(meta.outputs),
            properties=meta.properties,
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        decoded = decode_request(request)
        response = await self.dataplane.infer(request.model_name, request.model_version or None, decoded)
        return encode_response(response, raw=bool(request.raw_input_contents))


def _guarded(
    method: Callable[[Req, Any], Awaitable[Res]],
) -> Callable[[Req, grpc.aio.ServicerContext[Req, Res]], Awaitable[Res]]:
    async def call(request: Req, context: grpc.aio.ServicerContext[Req, Res]) -> Res:
        try:
            return await method(request, context)
        except ServingError as exc:
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
            raise  # abort raises; this is for the type checker

    return call


def generic_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    def unary(method: Callable[[Any, Any], Awaitable[Any]], request: type[Message], response: type[Message]) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            _guarded(method), request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": unary(servicer.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(servicer.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(servicer.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(servicer.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(servicer.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": unary(servicer.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        },
    )
