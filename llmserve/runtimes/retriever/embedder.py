"""Embeddings from an OpenAI-compatible service (`POST {url}/v1/embeddings`): the gateway (so the embeddings
service may be at zero replicas: the activator wakes it), or an embeddings worker directly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


class EmbeddingsError(RuntimeError):
    """The embeddings service did not give usable embeddings."""


class Embedder:
    def __init__(self, url: str, model: str, *, api_key: str | None = None, batch: int = 32) -> None:
        self.url = url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.batch = batch
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(300.0, connect=5.0))

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch):
            vectors += await self._embed_batch(texts[start : start + self.batch])
        return vectors

    async def embed_when_up(self, texts: list[str], within_s: float) -> list[list[float]]:
        """`embed`, retried while the service cannot be reached or is not ready (it may be starting too)."""
        deadline = time.monotonic() + within_s
        delay = 0.5
        while True:
            try:
                return await self.embed(texts)
            except (httpx.TransportError, EmbeddingsError) as exc:
                if time.monotonic() + delay > deadline:
                    raise EmbeddingsError(f"no embeddings from {self.url} within {within_s:g} s: {exc}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        response = await self._client.post(self.url, json={"model": self.model, "input": texts})
        if response.status_code != 200:
            raise EmbeddingsError(f"{self.url} answered {response.status_code}: {response.text[:300]}")
        data: list[dict[str, Any]] = sorted(response.json()["data"], key=lambda item: item["index"])
        if len(data) != len(texts):
            raise EmbeddingsError(f"{self.url} returned {len(data)} embeddings for {len(texts)} inputs")
        return [item["embedding"] for item in data]

    async def close(self) -> None:
        await self._client.aclose()
