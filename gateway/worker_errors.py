"""What a client sees when a worker answers with an error: the worker's status and body -> a `ServingError`.

Policy (README, "Limits and failure behaviour"):
- **The request's fault (worker 400 / 422)**: the client gets 400 with the worker's own words, because they tell it
  what to fix ("This model's maximum context length is 2048 tokens...", "temperature must be non-negative"), in
  OpenAI's envelope with the gateway's error type (`invalid_request_error`) and the parameter when the worker
  named one the client can send. Cleaned first: sentences naming the worker's environment variables (vLLM's
  "set the VLLM_MAX_N_SEQUENCES environment variable") are dropped; vLLM's "(parameter=..., value=...)" suffix
  goes (it is in `param`); pydantic's dumps ("1 validation error: {'type': ..., 'loc': 'body.messages.0.
  ChatCompletionDeveloperMessageParam.role', ...}") become one sentence in the gateway's own words without the
  class names; a text still naming internals (a traceback, a file path, a Python class) is replaced by a
  generic message. At most 1000 characters.
- **Not the client's fault**: a worker's 401/403/405 (the gateway's request was wrong, not the client's) and any
  other status -> 502 with the gateway's message; the worker's text is kept for the log (`worker_message`), never
  sent. A worker's 404 says the model or route is not served there -> 404 in the gateway's words; 413 -> 413.
- **Busy or not ready (worker 429 / 503)** -> 503 + Retry-After, kind UNAVAILABLE: another replica may serve it.
- **Engine dead**: vLLM's 500 whose message is EngineDeadError's ("EngineCore encountered an issue. See stack
  trace (above) for the root cause.") -> 502 + Retry-After in the gateway's words, kind ENGINE_DEAD: the caller
  withdraws the replica (its API server is up, its engine is not; every later request would fail the same way).
V2 runtime replicas answer `{"error": "..."}`: the same rules apply to that message.

A pure function of its inputs: the caller (the dispatch path) renders the ServingError, logs `worker_message`,
and acts on `kind`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from enum import StrEnum

import orjson

from llmserve.protocol.errors import ServingError

MAX_MESSAGE_CHARS = 1000
RETRY_AFTER_S = 1

ENGINE_DEAD_MARKERS = ("EngineCore encountered an issue", "EngineDeadError", "Engine loop is not running")
_ENV_VAR = re.compile(r"\b(?:VLLM|CUDA|HF|TORCH|OMP|LLMSERVE)_[A-Z0-9_]+\b|environment variable", re.IGNORECASE)
_PARAMETER_SUFFIX = re.compile(r"\s*\(parameter=[^)]*\)\s*$")
_VALIDATION = re.compile(r"^\d+ validation errors?(?: for \w+)?:?\s*\n", re.IGNORECASE)
_INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|/site-packages/|\.py\b"
    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*(?:Request|Params?|Model|Config|Error|Exception)\b"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CLASS_LIKE = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$")
_PARAM = re.compile(r"^[a-z][a-z0-9_]*$")
_NOT_CLIENT_PARAMS = frozenset({"input_tokens", "body"})


class WorkerErrorKind(StrEnum):
    CLIENT = "client"  # the request is at fault: the client sees the worker's (cleaned) words
    UNAVAILABLE = "unavailable"  # busy or not ready: another replica may serve the request
    ENGINE_DEAD = "engine_dead"  # the replica cannot serve any more: withdraw it
    FAILED = "failed"  # anything else the worker got wrong


@dataclass(frozen=True, slots=True)
class WorkerError:
    kind: WorkerErrorKind
    error: ServingError  # what the client sees
    worker_message: str  # the worker's own text, for the log; never sent to the client


def worker_error(
    status: int, body: bytes, *, path: str = "", model: str | None = None, retry_after_s: int = RETRY_AFTER_S
) -> WorkerError:
    """Classify a worker's error response (`status` >= 400) to a request for `path` naming `model`; the errors
    that invite a retry (engine dead, busy) say `Retry-After: retry_after_s`."""
    message, param = _worker_text(body)
    logged = message[:MAX_MESSAGE_CHARS] if message else body[:200].decode("utf-8", "replace")
    if status >= 500 and any(marker in message for marker in ENGINE_DEAD_MARKERS):
        return WorkerError(
            WorkerErrorKind.ENGINE_DEAD,
            ServingError(
                502,
                "The model worker's engine has stopped; retry the request.",
                code="worker_engine_dead",
                headers={"retry-after": str(retry_after_s)},
            ),
            logged,
        )
    if status in (400, 422):
        return WorkerError(WorkerErrorKind.CLIENT, _client_error(message, param), logged)
    if status in (429, 503):
        error = ServingError(
            503,
            "The model worker is busy or not ready; retry later.",
            code="worker_unavailable",
            headers={"retry-after": str(retry_after_s)},
        )
        return WorkerError(WorkerErrorKind.UNAVAILABLE, error, logged)
    if status == 404:
        if model is not None and (param == "model" or "model" in message.lower()):
            return WorkerError(WorkerErrorKind.CLIENT, ServingError.model_not_found(model), logged)
        where = f" {path}" if path else " this route"
        error = ServingError(404, f"The model's workers do not serve{where}.", code="not_found")
        return WorkerError(WorkerErrorKind.CLIENT, error, logged)
    if status == 413:
        error = ServingError(413, "The request is larger than the model worker accepts.", code="payload_too_large")
        return WorkerError(WorkerErrorKind.CLIENT, error, logged)
    error = ServingError(502, f"The model worker failed (status {status}).", code="upstream_error")
    return WorkerError(WorkerErrorKind.FAILED, error, logged)


def relayed_v2(status: int, body: bytes) -> bool:
    """Whether a V2 runtime's error answer goes to the client as it is: the runtime is ours and words its errors
    for clients (`{"error": "Model 'iris' failed: ValueError: X has 3 features, but ... 4"}`), so its envelope is
    relayed, unless the status says the gateway's own request was wrong (401/403/405/407) or the body is not the
    runtime's envelope (a proxy's or a server's default page): those get the gateway's words (`worker_error`)."""
    if status in (401, 403, 405, 407):
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("error"), str)


def worker_stream_error(frame: bytes, *, path: str = "", model: str | None = None) -> WorkerError | None:
    """An SSE `data:` payload that is an error (vLLM reports errors after the stream started this way), classified
    like a response with the status it names; None for an ordinary frame."""
    if b'"error"' not in frame:
        return None
    try:
        payload = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "error" not in payload:
        return None
    inner = payload["error"]
    status = inner.get("code") if isinstance(inner, dict) else None
    return worker_error(status if isinstance(status, int) and status >= 400 else 500, frame, path=path, model=model)


# -- reading the worker's body ------------------------------------------------------------------------------------
def _worker_text(body: bytes) -> tuple[str, str | None]:
    """The message and param of OpenAI's envelope, V2's `{"error": "..."}` or FastAPI's `{"detail": ...}`; the
    body as text otherwise."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace").strip(), None
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail"))
        if isinstance(error, dict):
            param = error.get("param")
            return str(error.get("message", "")), param if isinstance(param, str) else None
        if isinstance(error, str):
            return error, None
        if error is not None:
            return str(error), None
    return "", None


def _client_error(message: str, param: str | None) -> ServingError:
    validation = _VALIDATION.match(message)
    if validation:
        return _from_validation_dump(message[validation.end() :])
    cleaned = _clean(message)
    param = param if param and _PARAM.match(param) and param not in _NOT_CLIENT_PARAMS else None
    if not cleaned or _INTERNALS.search(cleaned):
        where = f" in '{param}'" if param else ""
        return ServingError.bad_request(f"The model worker rejected a value{where} of the request.", param=param)
    return ServingError.bad_request(cleaned, param=param)


def _clean(message: str) -> str:
    text = _PARAMETER_SUFFIX.sub("", message.strip())
    sentences = [s for s in _SENTENCE.split(text) if s and not _ENV_VAR.search(s)]
    text = " ".join(sentences).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3].rstrip() + "..."
    return text


def _from_validation_dump(dump: str) -> ServingError:
    """vLLM's pydantic dump (one Python dict literal per line) -> the first error, in the gateway's words."""
    first = dump.strip().splitlines()[0].strip() if dump.strip() else ""
    try:
        detail = ast.literal_eval(first)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        detail = None
    if not isinstance(detail, dict):
        return ServingError.bad_request("The model worker rejected the request as invalid.")
    kind = str(detail.get("type", ""))
    loc = str(detail.get("loc", ""))
    parts = [p for p in loc.split(".") if p and not _CLASS_LIKE.match(p) and not p.startswith(("function-", "tagged-"))]
    if parts and parts[0] == "body":
        parts = parts[1:]
    if kind == "json_invalid":
        return ServingError.bad_request("We could not parse the JSON body of your request.", code="invalid_json")
    where = ".".join(parts)
    param = parts[0] if parts and _PARAM.match(parts[0]) else None
    if not where:
        return ServingError.bad_request("The model worker rejected the request as invalid.")
    if kind == "missing":
        return ServingError.bad_request(f"Missing required parameter: '{where}'.", param=param)
    msg = _clean(str(detail.get("msg", "invalid value"))).rstrip(".")
    if _INTERNALS.search(msg):
        msg = "invalid value"
    return ServingError.bad_request(f"Invalid value for '{where}': {msg}.", param=param)


def rewrite_stream_errors(chunk: bytes, *, path: str = "", model: str | None = None) -> tuple[bytes, list[WorkerError]]:
    """`chunk` (whole SSE events) with each error event a worker sent mid-stream replaced by the gateway's own error
    event (the same policy as for responses), and the errors found (the caller acts on their kinds). A chunk
    without a top-level `"error"` key is returned as it is (a token whose text is "error" is not an error)."""
    found: list[WorkerError] = []
    events = chunk.split(b"\n\n")
    for i, event in enumerate(events):
        if b'"error"' not in event or not event.startswith(b"data:"):
            continue
        failure = worker_stream_error(event[5:].strip(), path=path, model=model)
        if failure is not None:
            found.append(failure)
            events[i] = b"data: " + orjson.dumps(failure.error.openai_body())
    return (b"\n\n".join(events), found) if found else (chunk, found)
