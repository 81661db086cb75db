"""Transformer classes for the tests: each hook's behaviour is chosen by the request itself."""

from __future__ import annotations

import asyncio
from typing import Any

from llmserve.runtimes.transformer import ClientError, Transformer


class Echo(Transformer):
    """Marks what passed through it; `reject`, `crash`, `hang` and `not_a_dict` in a body make the hook fail."""

    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag

    async def _misbehave(self, body: dict[str, Any]) -> None:
        if "reject" in body:
            raise ClientError(f"rejected: {body['reject']}", status=422, code="bad_prompt")
        if "crash" in body:
            raise RuntimeError(f"boom {body['crash']}")
        if "hang" in body:
            await asyncio.Event().wait()

    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        await self._misbehave(request)
        if "not_a_dict" in request:
            return [1, 2]  # type: ignore[return-value]
        return {**request, "preprocessed_by": self.tag, "seen_headers": headers}

    async def postprocess(self, response: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        await self._misbehave(response)
        return {**response, "postprocessed_by": self.tag}

    async def postprocess_chunk(self, chunk: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
        await self._misbehave(chunk)
        if chunk.get("drop"):
            return None
        return {**chunk, "seen": True}


class PreOnly(Transformer):
    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return request


class SyncHook:
    def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return request


class NoHooks(Transformer):
    pass


class FailsToLoad(Transformer):
    async def load(self) -> None:
        raise RuntimeError("weights missing")

    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return request


class Marker(Transformer):
    """For services behind a transformer, end to end: caps `max_tokens` (the predictor's answer shows it got the
    transformed request), marks whole answers and each streamed chunk with `tag`; a top-level `crash` or `reject`
    in a request makes preprocess fail, an `x-fail-chunk` header the chunk hook."""

    def __init__(self, tag: str = "marked", max_tokens: int = 2) -> None:
        self.tag = tag
        self.max_tokens = max_tokens

    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        if "reject" in request:
            raise ClientError(f"rejected: {request['reject']}", status=422, code="bad_prompt")
        if "crash" in request:
            raise RuntimeError(f"boom {request['crash']}")
        if "max_tokens" in request:
            request["max_tokens"] = min(int(request["max_tokens"]), self.max_tokens)
        return request

    async def postprocess(self, response: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return {**response, "transformed_by": self.tag}

    async def postprocess_chunk(self, chunk: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
        if "x-fail-chunk" in headers:
            raise RuntimeError("chunk boom")
        return {**chunk, "transformed_by": self.tag}


class WholeOnly(Marker):
    """Marker without a chunk hook: streams pass unchanged."""

    postprocess_chunk = Transformer.postprocess_chunk  # type: ignore[assignment]
