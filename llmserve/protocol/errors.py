"""The one error type of the serving path, and its two wire envelopes.

Every failure a client can see is a `ServingError` carrying its HTTP status. The gateway has a single place
that renders it: OpenAI's envelope on `/v1/*`, the Open Inference Protocol's `{"error": "..."}` on `/v2/*`.
"""

from __future__ import annotations

from typing import Any

import orjson

GRAPH_FAILURE = "Failed to process request"


class ServingError(Exception):
    """A failure with an HTTP status, an OpenAI error type, and optionally the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    # Constructors for the failures the gateway produces itself.
    @classmethod
    def bad_request(cls, message: str, *, param: str | None = None, code: str | None = None) -> ServingError:
        return cls(400, message, param=param, code=code)

    @classmethod
    def unauthorized(cls) -> ServingError:
        return cls(
            401,
            "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
            headers={"www-authenticate": "Bearer"},
        )

    @classmethod
    def model_not_found(cls, model: str) -> ServingError:
        return cls(
            404,
            f"The model '{model}' does not exist or is not served here.",
            param="model",
            code="model_not_found",
        )

    @classmethod
    def payload_too_large(cls, limit: int) -> ServingError:
        return cls(413, f"Request body is larger than the limit of {limit} bytes.", code="payload_too_large")

    @classmethod
    def no_ready_replica(cls, service: str, retry_after: int) -> ServingError:
        return cls(
            503,
            f"No ready replica for '{service}' yet; retry later.",
            code="no_ready_replica",
            headers={"retry-after": str(retry_after)},
        )

    @classmethod
    def upstream_failure(cls, detail: str) -> ServingError:
        return cls(502, f"The model worker failed: {detail}", code="upstream_error")

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def v2_body(self) -> dict[str, Any]:
        return {"error": self.message}

    def graph_body(self) -> dict[str, Any]:
        """KServe's InferenceGraph router envelope: `{"error": "Failed to process request", "cause": ...}`."""
        return {"error": GRAPH_FAILURE, "cause": self.message}

    def render(self, path: str) -> bytes:
        """The body for a request to `path`: the V2 envelope under /v2, OpenAI's elsewhere."""
        body = self.v2_body() if path.startswith("/v2") else self.openai_body()
        return orjson.dumps(body)


def _default_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status == 401:
        return "authentication_error"
    return "invalid_request_error"
