"""Example transformer for OpenAI chat and completions: masks e-mail addresses and phone numbers before the
prompt reaches the LLM, optionally wraps the user's messages in a system prompt, and masks the same in the answer
(whole responses and each streamed delta).

    spec:
      transformer:
        handler: configs/transformers/pii_mask.py:PIIMask
        config: {mask: "[redacted]", system_prompt: "Answer briefly."}
"""

from __future__ import annotations

import re
from typing import Any

from llmserve.runtimes.transformer import ClientError, Transformer

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<!\w)\+?\d[\d ()./-]{7,}\d(?!\w)")


class PIIMask(Transformer):
    def __init__(self, mask: str = "[redacted]", system_prompt: str | None = None, max_messages: int = 256) -> None:
        self.mask = mask
        self.system_prompt = system_prompt
        self.max_messages = max_messages

    def _clean(self, text: str) -> str:
        return PHONE.sub(self.mask, EMAIL.sub(self.mask, text))

    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        messages = request.get("messages")
        if isinstance(messages, list):
            if len(messages) > self.max_messages:
                raise ClientError(f"at most {self.max_messages} messages per request", status=400)
            for message in messages:
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    message["content"] = self._clean(message["content"])
            if self.system_prompt and not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        elif isinstance(request.get("prompt"), str):
            request["prompt"] = self._clean(request["prompt"])
        return request

    async def postprocess(self, response: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        for choice in response.get("choices", []):
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                message["content"] = self._clean(message["content"])
            if isinstance(choice.get("text"), str):
                choice["text"] = self._clean(choice["text"])
        return response

    async def postprocess_chunk(self, chunk: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
        # Per delta: a phone number split across two deltas is not caught (a real masker would keep a tail).
        for choice in chunk.get("choices", []):
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                delta["content"] = self._clean(delta["content"])
            if isinstance(choice.get("text"), str):
                choice["text"] = self._clean(choice["text"])
        return chunk
