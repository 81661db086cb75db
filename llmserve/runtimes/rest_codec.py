"""REST bodies <-> InferenceRequest / InferenceResponse, in JSON or with Triton's binary tensor extension.

Binary extension (as tritonclient speaks it): the request header `Inference-Header-Content-Length: N` says the
first N bytes are the JSON request; the raw tensors follow in input order, each input announcing its size as
`parameters.binary_data_size` instead of `data`. An output is returned raw when its request entry has
`parameters.binary_data: true`, or when the request's `parameters.binary_data_output` is true and the output's
own entry does not say otherwise; the response then carries the same header and the raw outputs after the JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import (
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    InferenceRequest,
    InferenceResponse,
    parse_inference_request,
    response_to_json,
)
from llmserve.runtimes.codecs import decode_json, decode_raw, encode_json, encode_raw

_JSON_HEADERS = [(b"content-type", b"application/json")]


def load_json(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ServingError(400, f"Malformed JSON in the request body: {exc}.") from None


def decode_request(body: bytes, header_length: bytes | None) -> InferenceRequest:
    """The request with every input's data decoded into a numpy array of its declared shape."""
    if header_length is None:
        request = parse_inference_request(load_json(body))
        for tensor in request.inputs:
            if BINARY_DATA_SIZE in tensor.parameters:
                raise ServingError(
                    400, f"Input '{tensor.name}' announces binary data but Inference-Header-Content-Length is missing."
                )
            tensor.data = decode_json(tensor.name, tensor.datatype, tensor.shape, tensor.data)
        return request
    try:
        json_size = int(header_length)
    except ValueError:
        raise ServingError(400, "Inference-Header-Content-Length must be an integer.") from None
    if not 0 < json_size <= len(body):
        raise ServingError(400, f"Inference-Header-Content-Length {json_size} does not fit a {len(body)}-byte body.")
    view = memoryview(body)
    request = parse_inference_request(load_json(view[:json_size]))
    offset = json_size
    for tensor in request.inputs:
        size = tensor.parameters.get(BINARY_DATA_SIZE)
        if size is None:
            tensor.data = decode_json(tensor.name, tensor.datatype, tensor.shape, tensor.data)
            continue
        if type(size) is not int or size < 0:
            raise ServingError(400, f"Input '{tensor.name}': binary_data_size must be a non-negative integer.")
        if offset + size > len(body):
            raise ServingError(400, f"Input '{tensor.name}': binary data runs past the end of the body.")
        tensor.data = decode_raw(tensor.name, tensor.datatype, tensor.shape, view[offset : offset + size])
        offset += size
    if offset != len(body):
        raise ServingError(400, f"{len(body) - offset} bytes of binary data follow the inputs unclaimed.")
    return request


def encode_response(request: InferenceRequest, response: InferenceResponse) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its headers; raw outputs where the request asked for binary data."""
    binary_default = request.parameters.get(BINARY_DATA_OUTPUT) is True
    wanted = {o.name: o.parameters.get(BINARY_DATA, binary_default) is True for o in request.outputs}
    raw_parts: list[bytes] = []
    for tensor in response.outputs:
        if wanted.get(tensor.name, binary_default):
            raw = encode_raw(tensor.data, tensor.datatype)
            raw_parts.append(raw)
            tensor.parameters = {**tensor.parameters, BINARY_DATA_SIZE: len(raw)}
            tensor.data = None
        else:
            tensor.data = encode_json(tensor.data, tensor.datatype)
    header = orjson.dumps(response_to_json(response), option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw_parts:
        return header, _JSON_HEADERS
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
    ]
    return b"".join([header, *raw_parts]), headers
