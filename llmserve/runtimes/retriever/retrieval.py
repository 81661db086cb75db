"""The retriever's work, independent of HTTP: index the passages once, then answer queries and augment chats."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from llmserve.protocol.errors import ServingError
from llmserve.runtimes.retriever.documents import Passage
from llmserve.runtimes.retriever.embedder import Embedder
from llmserve.runtimes.retriever.index import VectorIndex

INSTRUCTIONS = (
    "Answer the user's question using only the documents below. After the answer, name the document you used "
    "in square brackets, for example [{example}]. If the documents do not contain the answer, say so."
)


@dataclass(frozen=True, slots=True)
class Hit:
    passage: Passage
    score: float

    def as_json(self) -> dict[str, Any]:
        return {"id": self.passage.doc_id, "title": self.passage.title, "text": self.passage.text, "score": self.score}


class Retriever:
    def __init__(self, passages: list[Passage], embedder: Embedder, *, top_k: int = 2) -> None:
        self.passages = passages
        self.embedder = embedder
        self.top_k = top_k
        self.index: VectorIndex | None = None

    @property
    def ready(self) -> bool:
        return self.index is not None

    async def build(self, within_s: float) -> None:
        texts = [f"{p.title}. {p.text}" for p in self.passages]
        self.index = VectorIndex(await self.embedder.embed_when_up(texts, within_s))

    async def search(self, queries: list[str], k: int | None = None) -> list[list[Hit]]:
        if self.index is None:
            raise ServingError(503, "the retriever is still indexing its documents")
        vectors = await self.embedder.embed(queries)
        index = self.index
        return [
            [Hit(self.passages[row], score) for row, score in index.search(vector, k or self.top_k)]
            for vector in vectors
        ]

    async def augment(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The chat request with a system message holding the passages retrieved for its last user message."""
        question = _last_user_text(chat.get("messages"))
        (hits,) = await self.search([question])
        context = "\n\n".join(f"[{h.passage.doc_id}] {h.passage.title}: {h.passage.text}" for h in hits)
        example = hits[0].passage.doc_id if hits else "document-id"
        system = {"role": "system", "content": INSTRUCTIONS.format(example=example) + "\n\n" + context}
        augmented = copy.deepcopy(chat)
        augmented["messages"] = [system, *augmented["messages"]]
        return augmented


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ServingError.bad_request("'messages' must be a non-empty list", param="messages")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str) and content.strip():
                return content
            if isinstance(content, list):  # OpenAI content parts: the text ones
                text = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
                if text.strip():
                    return text
    raise ServingError.bad_request("no user message with text to retrieve for", param="messages")
