"""Token ids of a request's prompt, for prefix hashing and token-load accounting.

With the served model's own fast tokenizer (tokenizer.json in its model directory) when the service has one;
otherwise tiktoken's cl100k_base if it loads (it needs its file cached: no hub here), else ~4-character pieces.
Chat messages are tokenized one by one (role line + content) and cached by content, so the long parts of RAG
prompts and earlier turns of a conversation are tokenized once; a message longer than `offload_chars` that is
not cached yet is tokenized in a worker thread, keeping the event loop free.

The ids are consistent with themselves, not a byte-exact copy of the engine's chat template: the gateway compares
its own block hashes with the ones it recorded, so only consistency and block alignment matter.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest, OpenAIRequest

log = logging.getLogger("llmserve.gateway.routing")

Encoder = Callable[[str], list[int]]


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return f"{message.get('role', '')}\n{content or ''}\n"


def _pieces(text: str) -> list[int]:
    """A stand-in tokenizer: one id per 4 characters (ids are hashes, masked to 31 bits)."""
    return [hash(text[i : i + 4]) & 0x7FFFFFFF for i in range(0, len(text), 4)]


class PromptTokens:
    def __init__(self, cache_entries: int = 4096, cache_chars: int = 32 << 20, offload_chars: int = 8192) -> None:
        self.cache_entries = cache_entries
        self.cache_chars = cache_chars
        self.offload_chars = offload_chars
        self._cached_chars = 0
        self._encoders: dict[str, Encoder | None] = {}  # tokenizer dir -> encoder (None while loading)
        self._fallback: Encoder | None = None
        self._fallback_tried = False
        self._cache: OrderedDict[tuple[str, str], array[int]] = OrderedDict()

    # -- encoders -------------------------------------------------------------------------------------------------
    def prepare(self, tokenizer_dir: str | None) -> None:
        """Start loading a service's tokenizer in the background (loading takes ~0.5 s)."""
        if tokenizer_dir is None or tokenizer_dir in self._encoders:
            return
        self._encoders[tokenizer_dir] = None
        asyncio.get_running_loop().run_in_executor(None, self._load, tokenizer_dir)

    def _load(self, tokenizer_dir: str) -> None:
        path = Path(tokenizer_dir) / "tokenizer.json"
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # no tokenizer.json, or not loadable: fall back
            log.warning("no tokenizer from %s (%s); routing estimates tokens", path, exc)
            return

        def encode(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False).ids)

        self._encoders[tokenizer_dir] = encode

    def encoder(self, tokenizer_dir: str | None) -> tuple[str, Encoder]:
        """(cache namespace, encoder) for a service."""
        if tokenizer_dir is not None:
            encode = self._encoders.get(tokenizer_dir)
            if encode is not None:
                return tokenizer_dir, encode
        if not self._fallback_tried:  # probe tiktoken once, off the loop (it may try the network)
            self._fallback_tried = True
            asyncio.get_running_loop().run_in_executor(None, self._load_fallback)
        if self._fallback is not None:
            return "tiktoken", self._fallback
        return "pieces", _pieces

    def _load_fallback(self) -> None:
        self._fallback = _tiktoken_encoder()

    # -- prompts --------------------------------------------------------------------------------------------------
    async def prompt_tokens(self, tokenizer_dir: str | None, request: OpenAIRequest) -> array[int]:
        namespace, encode = self.encoder(tokenizer_dir)
        if isinstance(request, ChatCompletionRequest):
            parts = [message_text(m) for m in request.messages]
        elif isinstance(request, CompletionRequest):
            prompt = request.prompt
            if isinstance(prompt, str):
                parts = [prompt]
            elif prompt and isinstance(prompt[0], int):
                return array("I", [t & 0xFFFFFFFF for t in prompt if isinstance(t, int)])
            else:
                parts = [p if isinstance(p, str) else "" for p in prompt][:1]  # a batch: route on its first prompt
        else:
            return array("I")
        tokens = array("I")
        for text in parts:
            tokens.extend(await self._encode_cached(namespace, encode, text))
        return tokens

    async def _encode_cached(self, namespace: str, encode: Encoder, text: str) -> array[int]:
        key = (namespace, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if len(text) > self.offload_chars:
            ids = await asyncio.get_running_loop().run_in_executor(None, encode, text)
        else:
            ids = encode(text)
        tokens = array("I", [t & 0xFFFFFFFF for t in ids])
        self._cache[key] = tokens
        self._cached_chars += len(text)
        while len(self._cache) > self.cache_entries or self._cached_chars > self.cache_chars:
            (_, evicted), _ = self._cache.popitem(last=False)
            self._cached_chars -= len(evicted)
        return tokens


def _tiktoken_encoder() -> Encoder | None:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base")
    except Exception as exc:  # offline without a cached file: expected here
        log.info("tiktoken's cl100k_base is not available (%s); estimating ~4 characters per token", exc)
        return None

    def encode(text: str) -> list[int]:
        return list(encoding.encode(text, disallowed_special=()))

    return encode
