"""The no-op transformer the benchmark puts in front of a predictor: every hook returns what it got, so what is
measured is the hop itself (the gateway's calls to the transformer process and back)."""

from __future__ import annotations

from typing import Any

from llmserve.runtimes.transformer import Transformer


class NoOp(Transformer):
    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return request

    async def postprocess(self, response: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return response

    async def postprocess_chunk(self, chunk: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
        return chunk
