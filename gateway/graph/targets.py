"""Where a serviceName step goes on its service, and the body it is sent: shared by every step caller.

KServe resolves serviceName to the predictor's endpoint by protocol (`/v1/models/M:predict` or
`/v2/models/M/infer`). llmserve's services also speak OpenAI, so the path follows the service's protocol and the
body, unless the step sets `path`:

- OpenAI services: `messages` -> /v1/chat/completions, `prompt` -> /v1/completions, `input` -> /v1/embeddings;
  the body's `model` is set to the service's served model name (a graph exposed as model "rag" sends its steps
  the client's body, whose `model` names the graph).
- V2 services: a V2 tensor request (`inputs`) -> /v2/models/M/infer; anything else -> KServe V1
  /v1/models/M:predict (KServe's default protocol; custom V1 models take any JSON object).
"""

from __future__ import annotations

from typing import Any

import orjson

from llmserve.endpoints import ServiceProtocol
from llmserve.protocol.errors import ServingError

_OPENAI_PATHS = (("messages", "/v1/chat/completions"), ("prompt", "/v1/completions"), ("input", "/v1/embeddings"))


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


def service_request(
    label: str, protocol: ServiceProtocol, model_name: str, body: bytes, path: str | None
) -> tuple[str, bytes]:
    """(path, body) for a step that calls a service speaking `protocol` and serving `model_name`."""
    decoded = _decode(body)
    if protocol == "v2":
        if path is None:
            path = f"/v2/models/{model_name}/infer" if decoded is not None and "inputs" in decoded else None
            path = path or f"/v1/models/{model_name}:predict"
        return path, body
    if path is None:
        path = next((p for key, p in _OPENAI_PATHS if decoded is not None and key in decoded), None)
        if path is None:
            raise ServingError.bad_request(
                f"{label}: cannot tell which OpenAI endpoint to call: the body has none of 'messages', 'prompt', "
                "'input' (set 'path' on the step)"
            )
    if decoded is not None and decoded.get("model") != model_name:
        decoded["model"] = model_name
        body = orjson.dumps(decoded)
    return path, body
