"""Pass-through OpenAI request models.

The gateway declares only the fields it routes or validates on and forwards the client's body unchanged, so new
OpenAI fields keep working without a change here. Types are strict (a JSON string is not an integer), as OpenAI
itself is; everything else is the worker's to validate.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmserve.protocol.errors import ServingError

PromptInput = str | list[str] | list[int] | list[list[int]]


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1)
    stream: bool | None = False
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=0)

    @property
    def streamed(self) -> bool:
        return bool(self.stream)


class ChatCompletionRequest(OpenAIRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)


class CompletionRequest(OpenAIRequest):
    prompt: PromptInput


class EmbeddingRequest(OpenAIRequest):
    input: PromptInput


_PROMPT_FIELDS = frozenset({"prompt", "input"})

RequestT = TypeVar("RequestT", bound=OpenAIRequest)


def parse_request(model: type[RequestT], body: bytes) -> RequestT:
    """Validate `body` as `model`, turning every failure into a 400 in OpenAI's words."""
    if not body:
        raise ServingError.bad_request("The request body is empty; send a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _to_bad_request(exc) from None


def _to_bad_request(exc: ValidationError) -> ServingError:
    err = exc.errors(include_url=False)[0]
    kind = err["type"]
    loc = [str(p) for p in err["loc"]]
    param = loc[0] if loc else None
    where = ".".join(loc)
    if kind == "json_invalid":
        return ServingError.bad_request(
            f"We could not parse the JSON body of your request: {err['msg']}.", code="invalid_json"
        )
    if kind == "model_type" or not loc:
        return ServingError.bad_request("The request body must be a JSON object.", code="invalid_json")
    if kind == "missing":
        return ServingError.bad_request(f"Missing required parameter: '{where}'.", param=param)
    if param in _PROMPT_FIELDS:
        return ServingError.bad_request(
            f"Invalid type for '{param}': expected a string, an array of strings, an array of token ids "
            "or an array of token-id arrays.",
            param=param,
        )
    return ServingError.bad_request(f"Invalid value for '{where}': {err['msg']}.", param=param)
