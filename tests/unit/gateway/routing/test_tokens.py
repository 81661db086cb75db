from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from gateway.routing.tokens import PromptTokens
from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    vocab = {"[UNK]": 0, "user": 1, "hello": 2, "world": 3, "system": 4, "be": 5, "brief": 6}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def chat(*contents: str) -> ChatCompletionRequest:
    roles = ["system", "user"]
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


async def loaded(tokens: PromptTokens, directory: str) -> None:
    tokens.prepare(directory)
    for _ in range(500):
        if tokens._encoders.get(directory) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("tokenizer did not load")


async def test_the_models_own_tokenizer(tokenizer_dir: Path) -> None:
    tokens = PromptTokens()
    await loaded(tokens, str(tokenizer_dir))
    ids = await tokens.prompt_tokens(str(tokenizer_dir), chat("be brief", "hello world"))
    assert list(ids) == [4, 5, 6, 1, 2, 3]
    completion = CompletionRequest.model_validate({"model": "m", "prompt": [5, 6, 7]})
    assert list(await tokens.prompt_tokens(str(tokenizer_dir), completion)) == [5, 6, 7]


async def test_messages_are_cached_and_bounded(tokenizer_dir: Path) -> None:
    tokens = PromptTokens(cache_entries=2)
    await loaded(tokens, str(tokenizer_dir))
    await tokens.prompt_tokens(str(tokenizer_dir), chat("be brief", "hello"))
    await tokens.prompt_tokens(str(tokenizer_dir), chat("be brief", "world"))
    assert len(tokens._cache) == 2


async def test_long_messages_are_tokenized_off_the_loop(tokenizer_dir: Path) -> None:
    tokens = PromptTokens(offload_chars=10)
    await loaded(tokens, str(tokenizer_dir))
    ids = await tokens.prompt_tokens(str(tokenizer_dir), chat("hello world " * 50))
    assert len(ids) == 1 + 100


async def test_without_a_tokenizer_prompts_are_estimated_consistently() -> None:
    tokens = PromptTokens()
    first = await tokens.prompt_tokens(None, chat("some system prompt that is long enough", "hi"))
    second = await tokens.prompt_tokens(None, chat("some system prompt that is long enough", "hi"))
    assert list(first) == list(second)
    assert len(first) > 5


async def test_missing_tokenizer_falls_back(tmp_path: Path) -> None:
    tokens = PromptTokens()
    tokens.prepare(str(tmp_path))  # no tokenizer.json there
    ids = await tokens.prompt_tokens(str(tmp_path), chat("hello world"))
    assert len(ids) > 0
