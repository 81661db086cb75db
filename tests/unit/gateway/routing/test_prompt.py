from __future__ import annotations

from gateway.routing.prompt import prompt_chunks, prompt_size
from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest


def chat(*contents: object) -> ChatCompletionRequest:
    roles = ["system", "user"]
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def completion(prompt: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_equal_prefixes_hash_equal_and_chain() -> None:
    document = "x" * 100
    a = prompt_chunks(chat(document, "first question"), chunk_chars=32)
    b = prompt_chunks(chat(document, "second question"), chunk_chars=32)
    assert len(a.hashes) == 4 + 1  # 100 characters: 3 full chunks and the rest, then the question
    assert a.hashes[:4] == b.hashes[:4]
    assert a.hashes[4] != b.hashes[4]
    other = prompt_chunks(chat("y" + document[1:], "first question"), chunk_chars=32)
    assert all(x != y for x, y in zip(a.hashes, other.hashes, strict=True))  # a chunk hash names its whole prefix
    assert prompt_chunks(chat("x" * 100, "first question"), 32) == a  # deterministic


def test_roles_and_message_boundaries_count() -> None:
    base = prompt_chunks(chat("be brief", "hello"))
    swapped = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "be brief"}, {"role": "user", "content": "hello"}]}
    )
    assert prompt_chunks(swapped).hashes[0] != base.hashes[0]
    assert prompt_chunks(chat("be briefhello")).hashes[0] != base.hashes[0]


def test_sizes_in_characters() -> None:
    chunks = prompt_chunks(chat("a" * 300, "b" * 10), chunk_chars=256)
    assert chunks.ends == [len("system") + 256, len("system") + 300, len("system") + 300 + len("user") + 10]
    assert chunks.size == chunks.ends[-1]
    assert prompt_size(chat("a" * 300, "b" * 10)) == (chunks.size, False)
    parts = [{"type": "text", "text": "look at "}, {"type": "image_url", "image_url": {"url": "http://x/1.png"}}]
    other = [{"type": "text", "text": "look at "}, {"type": "image_url", "image_url": {"url": "http://x/2.png"}}]
    assert prompt_size(chat(parts)) == (len("system") + len("look at "), False)
    assert prompt_chunks(chat(parts)).hashes != prompt_chunks(chat(other)).hashes  # the image is in the prefix


def test_completions_text_token_ids_and_batches() -> None:
    text = prompt_chunks(completion("z" * 600), chunk_chars=256)
    assert (len(text.hashes), text.size, text.exact) == (3, 600, False)
    ids = prompt_chunks(completion(list(range(150))), chunk_chars=256)  # 64 ids a chunk
    assert (len(ids.hashes), ids.ends, ids.size, ids.exact) == (3, [64, 128, 150], 150, True)
    assert prompt_size(completion(list(range(150)))) == (150, True)
    first = prompt_chunks(completion(["q" * 300, "other"]))
    assert first.hashes == prompt_chunks(completion("q" * 300)).hashes  # a batch routes on its first prompt
    assert prompt_chunks(completion([[1, 2, 3], [4]])).size == 3
