"""The retriever's parts without a network: documents -> passages, the vector index, retrieval and chat
augmentation over a deterministic fake embedder, and the HTTP routes in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from llmserve.protocol.errors import ServingError
from llmserve.runtimes.retriever.app import RetrieverApp
from llmserve.runtimes.retriever.documents import load_passages
from llmserve.runtimes.retriever.embedder import Embedder
from llmserve.runtimes.retriever.index import VectorIndex
from llmserve.runtimes.retriever.retrieval import Retriever
from tests.conftest import REPO

VOCABULARY = ["lighthouse", "keeper", "rover", "bread", "orchestra", "island", "salt"]


class WordEmbedder(Embedder):
    """Bag-of-words vectors over a tiny vocabulary: similar wording, similar vectors."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(texts)
        return [[float(text.lower().count(word)) + 0.01 for word in VOCABULARY] for text in texts]

    async def embed_when_up(self, texts: list[str], within_s: float) -> list[list[float]]:
        return await self.embed(texts)

    async def close(self) -> None:
        pass


def test_documents_become_titled_passages(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Alpha\n\nOne. Two! Three? Four. Five.\n")
    (tmp_path / "b.txt").write_text("No heading here.")
    (tmp_path / "skip.json").write_text("{}")
    passages = load_passages(tmp_path, sentences_per_passage=4)
    assert [(p.doc_id, p.title, p.text) for p in passages] == [
        ("a", "Alpha", "One. Two! Three? Four."),
        ("a", "Alpha", "Five."),
        ("b", "b", "No heading here."),
    ]
    with pytest.raises(ValueError, match="no documents"):
        load_passages(tmp_path / "empty")


def test_the_shipped_documents_load() -> None:
    passages = load_passages(REPO / "configs" / "rag" / "docs")
    assert {p.doc_id for p in passages} == {"tarn-lighthouse", "kestrel-rover", "saffron-bakery", "glasswing-orchestra"}


def test_index_ranks_by_cosine_similarity() -> None:
    index = VectorIndex([[1, 0], [0, 3], [1, 1]])
    assert [row for row, _ in index.search([0, 1], 2)] == [1, 2]
    (best, score), *_ = index.search([2, 0], 3)
    assert (best, round(score, 6)) == (0, 1.0)
    with pytest.raises(ValueError, match="3 dimensions"):
        index.search([1, 2, 3], 1)


async def test_retrieval_and_augmentation() -> None:
    retriever = Retriever(load_passages(REPO / "configs" / "rag" / "docs"), WordEmbedder(), top_k=2)
    with pytest.raises(ServingError, match="still indexing"):
        await retriever.search(["x"])
    await retriever.build(1)
    (hits,) = await retriever.search(["Who is the lighthouse keeper on the island?"])
    assert hits[0].passage.doc_id == "tarn-lighthouse"
    chat = {"model": "rag", "max_tokens": 9, "messages": [{"role": "user", "content": "Who keeps the lighthouse?"}]}
    augmented = await retriever.augment(chat)
    assert augmented["max_tokens"] == 9
    assert augmented["messages"][1:] == chat["messages"]
    assert augmented["messages"][0]["content"].count("[tarn-lighthouse]") >= 2  # the passage and the example
    assert chat["messages"][0]["role"] == "user"  # the caller's dict is left alone
    with pytest.raises(ServingError, match="no user message"):
        await retriever.augment({"messages": [{"role": "system", "content": "x"}]})


@pytest.fixture
async def client() -> Any:
    app = RetrieverApp(
        "docs", Retriever(load_passages(REPO / "configs" / "rag" / "docs"), WordEmbedder()), index_within_s=1
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as http:
        await app.retriever.build(1)
        yield http


async def test_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/ready")).status_code == 200
    found = await client.post("/v1/models/docs:predict", json={"instances": ["rover on salt flats"], "top_k": 1})
    assert found.status_code == 200
    assert [hit["id"] for hit in found.json()["predictions"][0]] == ["kestrel-rover"]
    chat = await client.post("/v1/models/docs:predict", json={"messages": [{"role": "user", "content": "bread"}]})
    assert chat.json()["messages"][0]["role"] == "system"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/v1/models/docs:predict", {"rows": []}, 400, "send {'instances'"),
        ("POST", "/v1/models/docs:predict", {"instances": [1]}, 400, "question strings"),
        ("POST", "/v1/models/docs:predict", {"instances": ["x"], "top_k": 0}, 400, "top_k"),
        ("POST", "/v1/models/other:predict", {}, 404, "no route"),
        ("GET", "/v1/models/docs:predict", None, 405, "takes POST"),
    ],
)
async def test_bad_requests_get_clear_errors(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int, fragment: str
) -> None:
    answer = await client.request(method, path, json=body)
    assert answer.status_code == status
    assert fragment in answer.json()["error"]


async def test_a_body_that_is_not_json_is_a_400(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/models/docs:predict", content=b"{nope")
    assert answer.status_code == 400
    assert "not JSON" in answer.json()["error"]
