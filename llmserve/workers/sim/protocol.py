"""The OpenAI request fields the simulator reads, validated the way vLLM 0.32 validates them, and its errors.

Only what changes the simulated work is read (model, prompt/messages, max_tokens, n, stream, stream_options,
ignore_eos, min_tokens); every other field is accepted and ignored. Scalars are parsed leniently as pydantic's
lax mode does in vLLM ("2" is an int, "yes" is true). Error messages follow vLLM's wording where it matters to a
client (status, type, param); validation-error texts are shorter than pydantic's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmserve.workers.sim.tokenizer import SimTokenizer, message_text


class SimError(Exception):
    """An error answered in OpenAI's envelope with vLLM's conventions (`code` is the HTTP status)."""

    def __init__(self, status: int, message: str, error_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.status}}

    @classmethod
    def validation(cls, field: str, kind: str, message: str, value: Any = None) -> SimError:
        """A request-shape error, worded as vLLM reports pydantic's (type "Bad Request", param "body.<field>")."""
        loc = f"body.{field}" if field else "body"
        detail = f"{{'type': '{kind}', 'loc': '{loc}', 'msg': '{message}', 'input': {_input_repr(value)}}}"
        return cls(400, f"1 validation error:\n  {detail}", "Bad Request", loc)

    @classmethod
    def unknown_model(cls, model: str, valid: Sequence[str]) -> SimError:
        return cls(
            404, f"The model `{model}` does not exist. Valid aliases: {', '.join(valid)}.", "NotFoundError", "model"
        )


@dataclass(frozen=True)
class GenerationRequest:
    """One chat or completion call: the prompts (token ids) and how much to generate for each."""

    model: str
    lora: str | None
    prompts: list[list[int]]
    n: int
    max_tokens: int | None
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool


class ModelNames:
    """The names a worker answers to: the served model names and its LoRA adapters."""

    def __init__(self, served: Sequence[str], loras: Sequence[str] = ()) -> None:
        self.served = list(served)
        self.loras = list(loras)

    def resolve(self, body: Mapping[str, Any]) -> tuple[str, str | None]:
        """(model name to echo, LoRA adapter or None); 404 for a name this worker does not serve."""
        model = body.get("model")
        if model is None:
            return self.served[0], None
        if not isinstance(model, str):
            raise SimError.validation("model", "string_type", "Input should be a valid string", model)
        if model in self.served:
            return model, None
        if model in self.loras:
            return model, model
        raise SimError.unknown_model(model, self.served + self.loras)


def parse_chat(body: Any, names: ModelNames, tokenizer: SimTokenizer, max_model_len: int) -> GenerationRequest:
    body = _object(body)
    messages = body.get("messages")
    if messages is None:
        raise SimError.validation("messages", "missing", "Field required", body)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise SimError.validation("messages", "list_type", "Input should be a valid list", messages)
    model, lora = names.resolve(body)
    if not messages:
        raise SimError(400, "Cannot apply chat template to an empty conversation. Provide at least one message.")
    max_tokens = _int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens")
    prompt = chat_prompt(messages, tokenizer, bool(_bool(body, "add_generation_prompt", True)))
    return _finish(body, model, lora, [prompt], max_tokens, max_model_len)


def parse_completion(body: Any, names: ModelNames, tokenizer: SimTokenizer, max_model_len: int) -> GenerationRequest:
    body = _object(body)
    model, lora = names.resolve(body)
    prompts = completion_prompts(body.get("prompt"), tokenizer)
    return _finish(body, model, lora, prompts, _int(body, "max_tokens"), max_model_len)


def chat_prompt(
    messages: Sequence[Mapping[str, Any]], tokenizer: SimTokenizer, add_generation_prompt: bool
) -> list[int]:
    try:  # content parts are flattened to text first, as vLLM does for string-content templates
        flat = [{**m, "content": message_text(m)} for m in messages]
        text = tokenizer.render_chat(flat, add_generation_prompt=add_generation_prompt)
    except (ValueError, TypeError) as exc:
        raise SimError(400, f"Cannot apply the chat template: {exc}") from None
    return tokenizer.encode(text, add_special_tokens=False)


def completion_prompts(prompt: Any, tokenizer: SimTokenizer) -> list[list[int]]:
    """str | list[str] | list[int] | list[list[int]] -> one token-id list per prompt."""
    empty = SimError(
        400, "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)", param="prompt"
    )
    if prompt is None or prompt == "" or prompt == []:
        raise empty
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, list):
        if all(_is_token(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            prompts = [tokenizer.encode(p) for p in prompt]
        elif all(isinstance(p, list) and all(_is_token(t) for t in p) for p in prompt):
            prompts = [list(p) for p in prompt]
        else:
            prompts = []
        if prompts and all(prompts):
            return prompts
        if prompts:
            raise empty
    raise SimError.validation(
        "prompt", "union_type", "Input should be a string or a list of strings or token ids", prompt
    )


def _finish(
    body: Mapping[str, Any],
    model: str,
    lora: str | None,
    prompts: list[list[int]],
    max_tokens: int | None,
    max_model_len: int,
) -> GenerationRequest:
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise SimError(
            400,
            f"max_tokens must be at least 1, got {max_tokens}. (parameter={param}, value={max_tokens})",
            param=param,
        )
    if max_tokens is not None and max_tokens > max_model_len:
        raise SimError(
            400,
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. Please "
            f"request fewer output tokens. (parameter={param}, value={max_tokens})",
            param=param,
        )
    n = _int(body, "n")
    if n is not None and n < 1:
        raise SimError(400, f"n must be at least 1, got {n}.")
    min_tokens = _int(body, "min_tokens") or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise SimError(400, f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.")
    stream = bool(_bool(body, "stream", False))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise SimError(
            400,
            "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
            param="stream_options",
        )
    options = options if isinstance(options, dict) else {}
    for prompt in prompts:
        if len(prompt) >= max_model_len:
            shown = min(len(prompt), max_model_len + 1)
            raise SimError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"prompt contains at least {shown} input tokens, which exceeds this limit even without any "
                f"output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
                f"value={shown})",
                param="input_tokens",
            )
    return GenerationRequest(
        model=model,
        lora=lora,
        prompts=prompts,
        n=n or 1,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=bool(_bool(body, "ignore_eos", False)),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        continuous_usage=bool(options.get("continuous_usage_stats")),
    )


def parse_tokenize(body: Any, names: ModelNames, tokenizer: SimTokenizer) -> tuple[list[int], bool]:
    """Token ids of a `/tokenize` body (`prompt` or `messages`), and whether token strings were asked for."""
    body = _object(body)
    names.resolve(body)
    strs = bool(_bool(body, "return_token_strs", False))
    if isinstance(body.get("messages"), list):
        ids = chat_prompt(body["messages"], tokenizer, bool(_bool(body, "add_generation_prompt", True)))
        if _bool(body, "add_special_tokens", False):
            ids = tokenizer.encode("", add_special_tokens=True) + ids
        return ids, strs
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=bool(_bool(body, "add_special_tokens", True))), strs
    if prompt is None and body.get("messages") is None:
        raise SimError.validation("prompt", "missing", "Field required", body)
    raise SimError.validation("prompt", "string_type", "Input should be a valid string", prompt)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SimError.validation(
            "", "model_attributes_type", "Input should be a valid dictionary or object to extract fields from", body
        )
    return body


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            message = "Input should be a valid integer, unable to parse string as an integer"
            raise SimError.validation(key, "int_parsing", message, value) from None
    raise SimError.validation(key, "int_type", "Input should be a valid integer", value)


_TRUE = {"true", "1", "yes", "on", "y", "t"}
_FALSE = {"false", "0", "no", "off", "n", "f"}


def _bool(body: Mapping[str, Any], key: str, default: bool | None) -> bool | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise SimError.validation(key, "bool_parsing", "Input should be a valid boolean", value)


def _input_repr(value: Any) -> str:
    """How vLLM's validation messages show the offending input."""
    if isinstance(value, dict):
        return f"'<dict of {len(value)} items>'"
    if isinstance(value, list):
        return f"'<list of {len(value)} items>'"
    return repr(value)
