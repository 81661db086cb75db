"""Open Inference Protocol (V2) wire types, shared by the runtime and the gateway; no numpy, no framework.

The spec: ../shared/specs/open-inference-protocol/ (REST: open_inference_rest.yaml, gRPC: open_inference_grpc.proto).
A tensor's `data` is whatever the layer holding it uses: the JSON list (or None when its bytes travel in the
binary extension) on the wire, a numpy array inside the runtime. Parsing checks the structure only (names,
datatypes, shapes); the runtime's codecs check that data and shape agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.protocol.errors import ServingError

Parameters = dict[str, Any]  # values: str | int | float | bool

# Datatype -> element size in bytes (BYTES: variable). BF16 is Triton's, accepted in binary form only.
DATATYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
    "BYTES": 0,
}

# Parameters of Triton's binary tensor extension (HTTP): request/response bodies are a JSON header of
# `Inference-Header-Content-Length` bytes followed by the raw tensors it announces.
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
INFERENCE_HEADER = "inference-header-content-length"

SERVER_EXTENSIONS = ("binary_tensor_data", "model_repository", "explain", "kserve_v1")


@dataclass(slots=True)
class InferTensor:
    """An input or output tensor: `data` is JSON data or None on the wire, a numpy array in the runtime."""

    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    inputs: list[InferTensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    outputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: variable size

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    platform: str
    versions: tuple[str, ...] = ()
    inputs: tuple[TensorMetadata, ...] = ()
    outputs: tuple[TensorMetadata, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        if self.properties:
            body["properties"] = dict(self.properties)
        return body


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...] = SERVER_EXTENSIONS

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}


def _bad_request(message: str) -> ServingError:
    return ServingError(400, message)


def parse_inference_request(body: Any) -> InferenceRequest:
    """An InferenceRequest from decoded JSON; 400 with the offending field named when the structure is wrong."""
    if not isinstance(body, dict):
        raise _bad_request("The request body must be a JSON object.")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad_request("'inputs' must be a non-empty list of tensors.")
    inputs = [_parse_input(item, i) for i, item in enumerate(raw_inputs)]
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad_request("'id' must be a string.")
    outputs: list[RequestedOutput] = []
    raw_outputs = body.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _bad_request("'outputs' must be a list.")
        for i, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise _bad_request(f"outputs[{i}] must be an object with a string 'name'.")
            outputs.append(RequestedOutput(item["name"], _parameters(item.get("parameters"), f"outputs[{i}]")))
    return InferenceRequest(
        inputs=inputs,
        id=request_id,
        parameters=_parameters(body.get("parameters"), "parameters"),
        outputs=outputs,
    )


def _parse_input(item: Any, index: int) -> InferTensor:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise _bad_request(f"{where} must be an object.")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_request(f"{where}.name must be a non-empty string.")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPE_SIZES:
        raise _bad_request(f"{where} ('{name}'): unknown datatype {datatype!r}; one of {', '.join(DATATYPE_SIZES)}.")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad_request(f"{where} ('{name}'): 'shape' must be a list of non-negative integers.")
    parameters = _parameters(item.get("parameters"), where)
    data = item.get("data")
    if data is None and BINARY_DATA_SIZE not in parameters:
        raise _bad_request(f"{where} ('{name}'): 'data' is missing.")
    return InferTensor(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters)


def _parameters(value: Any, where: str) -> Parameters:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad_request(f"{where}.parameters must be an object.")
    return value


def response_to_json(response: InferenceResponse) -> dict[str, Any]:
    """The response as a JSON-ready dict; tensor data is passed through (orjson serializes numpy arrays)."""
    body: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        body["model_version"] = response.model_version
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    outputs = []
    for tensor in response.outputs:
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.parameters:
            out["parameters"] = tensor.parameters
        if tensor.data is not None:
            out["data"] = tensor.data
        outputs.append(out)
    body["outputs"] = outputs
    return body
