"""The "is ready, try it" hint `llmserve up` prints once a service serves: a call that fits the service.

An LLM service (OpenAI protocol) gets a streamed chat curl and an `openai` SDK one-liner; a predictive service
(V2 / Open Inference Protocol) gets a `/v2/models/NAME/infer` curl with one row of the model's own inputs, from
the runtime's model metadata (GET /v2/models/NAME: input names, datatypes, shapes; -1 dimensions become 1).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

import httpx

KEY_HINT = "<your key>"


def ready_hint(
    model: str, protocol: str, base_url: str, *, needs_key: bool, metadata: Mapping[str, Any] | None = None
) -> str:
    """The lines to print (ending with a newline) for served model `model` whose protocol is "openai" or "v2"
    (llmserve.endpoints.ServiceInfo.protocol); `metadata`: the V2 model metadata, when it could be read."""
    auth = f"-H {shlex.quote('authorization: Bearer ' + KEY_HINT)} " if needs_key else ""
    if protocol == "v2":
        return _v2_hint(model, base_url, auth, metadata)
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    key = KEY_HINT if needs_key else "unused"
    python = (
        f"from openai import OpenAI; c = OpenAI(base_url='{base_url}/v1', api_key='{key}'); "
        f"print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hi!'}}])"
        ".choices[0].message.content)"
    )
    return (
        f"\n  '{model}' is ready. Try it:\n"
        f"    curl -N {base_url}/v1/chat/completions -H 'content-type: application/json' {auth}"
        f"-d {shlex.quote(json.dumps(body))}\n"
        f"    python -c {shlex.quote(python)}\n"
    )


def _v2_hint(model: str, base_url: str, auth: str, metadata: Mapping[str, Any] | None) -> str:
    url = f"{base_url}/v2/models/{model}"
    request = example_request(metadata) if metadata else None
    if request is None:
        return (
            f"\n  '{model}' is ready (Open Inference Protocol). Its inputs:\n"
            f"    curl {auth}{url}\n"
            f"  then POST a request with those inputs to {url}/infer\n"
        )
    return (
        f"\n  '{model}' is ready (Open Inference Protocol). Try it:\n"
        f"    curl {url}/infer -H 'content-type: application/json' {auth}"
        f"-d {shlex.quote(json.dumps(request))}\n"
        f"  (one row of zeros; its inputs and outputs: curl {auth}{url})\n"
    )


def example_request(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """An inference request with one tensor per declared input: its name, datatype and shape (unknown, -1,
    dimensions as 1), filled with zeros (false, ""); None when the metadata declares no input."""
    inputs = []
    for declared in metadata.get("inputs") or ():
        shape = [1 if int(d) < 0 else int(d) for d in declared.get("shape") or (1,)]
        datatype = str(declared.get("datatype") or "FP32")
        count = 1
        for dim in shape:
            count *= dim
        inputs.append({"name": declared["name"], "shape": shape, "datatype": datatype,
                       "data": [_zero(datatype)] * count})  # fmt: skip
    return {"inputs": inputs} if inputs else None


def _zero(datatype: str) -> Any:
    if datatype == "BOOL":
        return False
    if datatype == "BYTES":
        return ""
    return 0.0 if datatype.startswith(("FP", "BF")) else 0


async def fetch_metadata(
    client: httpx.AsyncClient, base_url: str, model: str, headers: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """GET /v2/models/NAME through the gateway; None when it does not answer 200 with JSON."""
    try:
        response = await client.get(f"{base_url}/v2/models/{model}", headers=dict(headers or {}), timeout=5)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None
