"""The prompt as routing sees it: chained hashes of its text cut into fixed-size chunks, and its size.

Prefix affinity needs to know which replica probably holds the start of a prompt in its KV cache; for that, equal
prefixes must give equal hashes, and nothing more. So routing does not tokenize: a chat prompt is cut message by
message (the role, then the content) into chunks of `chunk_chars` characters, and chunk i's hash covers chunks
0..i (the messages before it included), so one hash names a whole prefix, as vLLM's chained block hashes do for
blocks of tokens. A prompt given as token ids is cut into chunks of `chunk_chars // 4` ids instead, and its size is
then exact. Hashing a 10 kB prompt this way costs ~20 us; tokenizing it costs milliseconds.

Sizes are in characters (or tokens, for token ids); `tokens.TokenRatio` turns characters into estimated tokens.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest, OpenAIRequest

DEFAULT_CHUNK_CHARS = 256  # ~64 tokens: a prefix match is known to within one chunk
CHARS_PER_TOKEN_ID = 4  # token-id prompts: chunk_chars // 4 ids a chunk


@dataclass(frozen=True, slots=True)
class PromptChunks:
    """Chained hashes of a prompt's chunks; `ends[i]` is the prompt's size through chunk i; `segments[j]` is where
    message j's chunks end (one segment for a completion's prompt)."""

    hashes: list[int]
    ends: list[int]
    size: int  # characters, or tokens when `exact`
    segments: list[int]
    exact: bool = False  # sizes are token counts (the prompt was token ids)


def content_text(content: Any) -> str:
    """A message's text: the content string, or the text parts of a content list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def message_text(message: dict[str, Any]) -> str:
    """One message as `role\\ncontent\\n` (production-stack's prefix policy hashes the prompt this way)."""
    return f"{message.get('role', '')}\n{content_text(message.get('content'))}\n"


def _media(content: Any) -> str:
    """What a content list holds besides text (images, audio), as text: it is part of the prefix too."""
    if not isinstance(content, list):
        return ""
    return "".join(repr(part) for part in content if isinstance(part, dict) and part.get("type", "text") != "text")


def prompt_size(request: OpenAIRequest) -> tuple[int, bool]:
    """(size, exact): the prompt's characters, or its token count when it is token ids."""
    if isinstance(request, ChatCompletionRequest):
        return sum(len(str(m.get("role", ""))) + len(content_text(m.get("content"))) for m in request.messages), False
    if isinstance(request, CompletionRequest):
        prompt = _first_prompt(request)
        return len(prompt), not isinstance(prompt, str)
    return 0, False


def prompt_chunks(request: OpenAIRequest, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> PromptChunks:
    """The prompt's chunk hashes (chat messages, a completion's prompt or its first prompt of a batch)."""
    if isinstance(request, ChatCompletionRequest):
        hashes: list[int] = []
        ends: list[int] = []
        segments: list[int] = []
        chained = 0
        size = 0
        for message in request.messages:
            role = str(message.get("role", ""))
            content = message.get("content")
            text = content_text(content) + _media(content)
            chained = hash((chained, role))
            size += len(role)
            for start in range(0, len(text), chunk_chars) if text else (0,):
                piece = text[start : start + chunk_chars]
                chained = hash((chained, piece))
                size += len(piece)
                hashes.append(chained)
                ends.append(size)
            segments.append(len(hashes))
        return PromptChunks(hashes, ends, size, segments)
    if isinstance(request, CompletionRequest):
        prompt = _first_prompt(request)
        if isinstance(prompt, str):
            return _chunked(prompt, chunk_chars, exact=False)
        return _chunked(array("I", [t & 0xFFFFFFFF for t in prompt]).tobytes(), chunk_chars, exact=True)
    return PromptChunks([], [], 0, [])


def _chunked(data: str | bytes, chunk_chars: int, *, exact: bool) -> PromptChunks:
    """Chained chunk hashes of one string (or of token ids as uint32 bytes: chunk_chars // 4 ids a chunk)."""
    step = chunk_chars // CHARS_PER_TOKEN_ID * 4 if exact else chunk_chars
    unit = 4 if exact else 1
    hashes: list[int] = []
    ends: list[int] = []
    chained = 0
    for start in range(0, len(data), step):
        chained = hash((chained, data[start : start + step]))
        hashes.append(chained)
        ends.append(min(len(data), start + step) // unit)
    return PromptChunks(hashes, ends, len(data) // unit, [len(hashes)] if hashes else [], exact)


def _first_prompt(request: CompletionRequest) -> str | list[int]:
    """The prompt routing looks at: the prompt, or the first of a batch."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        return ""
    first = prompt[0]
    if isinstance(first, int):
        return [t for t in prompt if isinstance(t, int)]
    if isinstance(first, str):
        return first
    return [t for t in first if isinstance(t, int)] if isinstance(first, list) else ""
