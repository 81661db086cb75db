"""JSON the interpreter looks into: GJSON conditions (pygjson, a binding of gjson.rs: the same path syntax as the
Go gjson that KServe's router uses), KServe's mapPredictionsToInstances, and the Ensemble's merged answer."""

from __future__ import annotations

from typing import Any

import orjson
import pygjson


def is_json(body: bytes) -> bool:
    """gjson.ValidBytes: a syntactically valid JSON document."""
    return bool(body) and pygjson.validate(body)


def condition_met(body: bytes, path: str) -> bool:
    """gjson.GetBytes(body, path).Exists()."""
    return pygjson.get_bytes(body, path).exists()


def map_predictions_to_instances(body: bytes) -> bytes:
    """KServe's mapPredictionsToInstances: a JSON object with a non-empty `predictions` array becomes
    `{"instances": <that array>}` (every other field is dropped, as the router's decode into a two-field struct
    does); anything else is sent unchanged. Field names match case-insensitively, exact spelling first, like Go's
    encoding/json."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(decoded, dict):
        return body
    predictions = _go_field(decoded, "predictions")
    instances = _go_field(decoded, "instances")
    if not isinstance(predictions, list) or not predictions or not isinstance(instances, list | None):
        return body
    return orjson.dumps({"instances": predictions})


def _go_field(obj: dict[str, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    return next((value for key, value in obj.items() if key.lower() == name), None)


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object (null allowed, as Go's decode into a map), or ValueError."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the answer is not JSON ({exc})") from None
    if decoded is not None and not isinstance(decoded, dict):
        raise ValueError(f"the answer is a JSON {type(decoded).__name__}, not an object")
    return decoded


def dumps_sorted(value: Any) -> bytes:
    """JSON with keys sorted at every level, as Go's encoding/json writes the maps KServe's router merges."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def asks_for_stream(body: bytes) -> bool:
    """Whether the request is an OpenAI-style `"stream": true` body."""
    if b'"stream"' not in body:
        return False
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(decoded, dict) and decoded.get("stream") is True
