"""Tokenizers for the simulator: a real Hugging Face one from a model directory, or a cheap deterministic one.

Both also supply the synthetic output: a small vocabulary of single-token words whose text tokenizes back to the
same ids, so a conversation that sends an answer back hits the prefix cache the way it would on vLLM.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

OUTPUT_WORDS = (
    "the",
    "model",
    "is",
    "a",
    "small",
    "fast",
    "and",
    "it",
    "can",
    "answer",
    "your",
    "question",
    "in",
    "one",
    "or",
    "two",
    "short",
    "lines",
    "of",
    "text",
    "with",
    "some",
    "words",
    "that",
    "are",
    "not",
    "real",
    "but",
    "have",
    "right",
    "count",
    "each",
    "token",
    "time",
    "we",
    "will",
    "be",
    "here",
    "for",
    "you",
    "to",
    "see",
    "how",
    "this",
    "works",
    "on",
    "data",
    "very",
    "well",
    "so",
    "now",
    "all",
    "good",
)

CHATML_BOS = "<|im_start|>"
CHATML_EOS = "<|im_end|>"


class SimTokenizer(Protocol):
    name: str

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str: ...

    @property
    def output_vocab(self) -> tuple[int, ...]: ...

    def piece(self, token_id: int) -> str:
        """The text of one output token."""
        ...


def chatml(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """ChatML, the template SmolLM2 and Qwen use; message content may be a string or a list of text parts."""
    out = [f"{CHATML_BOS}{m.get('role', 'user')}\n{message_text(m)}{CHATML_EOS}\n" for m in messages]
    if add_generation_prompt:
        out.append(f"{CHATML_BOS}assistant\n")
    return "".join(out)


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ValueError("message content must be a string or a list of content parts")


class WordTokenizer:
    """~4 characters per token on English prose (~3.3 on code), deterministic across processes, no files:
    words with their leading space are cut into pieces of at most 6 characters, numbers into 3 digits; a
    piece's id is a CRC of its text; special tokens like `<|im_start|>` are one token each."""

    name = "sim-words"
    _PIECES = re.compile(r"<\|[a-z_]+\|>| ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+")
    _CHUNK = 6
    _VOCAB = 1 << 20

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        vocab = []
        for word in OUTPUT_WORDS:
            ids = self.encode(" " + word)
            if len(ids) == 1:
                vocab.append(ids[0])
                self._texts[ids[0]] = " " + word
        self._output_vocab = tuple(vocab)

    def _id(self, piece: str) -> int:
        token = self._ids.get(piece)
        if token is None:
            if len(self._ids) > 200_000:
                self._ids.clear()
            token = self._ids[piece] = zlib.crc32(piece.encode()) % self._VOCAB
        return token

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = []
        chunk = self._CHUNK
        for piece in self._PIECES.findall(text):
            if len(piece) <= chunk or piece.startswith("<|"):
                ids.append(self._id(piece))
            else:
                ids.extend(self._id(piece[i : i + chunk]) for i in range(0, len(piece), chunk))
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(self._texts.get(t, f"<{t}>") for t in token_ids)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        return chatml(messages, add_generation_prompt)

    @property
    def output_vocab(self) -> tuple[int, ...]:
        return self._output_vocab

    def piece(self, token_id: int) -> str:
        return self._texts[token_id]


class HFTokenizer:
    """`tokenizer.json` from a model directory (the `tokenizers` library, no transformers); the chat template
    from `chat_template.jinja` or `tokenizer_config.json`, rendered with jinja2 when it is installed, else ChatML."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.name = directory.name
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        self._template = _load_template(directory, config)
        self._specials = {k: v for k, v in config.items() if k in ("bos_token", "eos_token") and isinstance(v, str)}
        vocab = []
        self._texts: dict[int, str] = {}
        for word in OUTPUT_WORDS:
            ids = self._tokenizer.encode(" " + word, add_special_tokens=False).ids
            if len(ids) != 1 or ids[0] in self._texts:
                continue
            text = self._tokenizer.decode(ids)
            if text.strip() == word:  # a real single-token word, not an unknown-token stand-in
                vocab.append(ids[0])
                self._texts[ids[0]] = text
        if not vocab:
            raise ValueError(f"{directory}: no single-token words in this vocabulary")
        self._output_vocab = tuple(vocab)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            return chatml(messages, add_generation_prompt)
        return self._template(messages=messages, add_generation_prompt=add_generation_prompt, **self._specials)

    @property
    def output_vocab(self) -> tuple[int, ...]:
        return self._output_vocab

    def piece(self, token_id: int) -> str:
        return self._texts[token_id]


def load_tokenizer(directory: str | Path | None) -> SimTokenizer:
    return WordTokenizer() if directory is None else HFTokenizer(Path(directory))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _load_template(directory: Path, config: Mapping[str, Any]) -> Callable[..., str] | None:
    source: str | None = None
    if (directory / "chat_template.jinja").is_file():
        source = (directory / "chat_template.jinja").read_text()
    elif isinstance(config.get("chat_template"), str):
        source = config["chat_template"]
    if source is None:
        return None
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)

    def render(**context: Any) -> str:
        return str(template.render(**context))

    return render
