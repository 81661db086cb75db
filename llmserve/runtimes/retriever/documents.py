"""A document set on disk -> passages to index: each `*.md` / `*.txt` file is one document (id: the file name
without its suffix; title: its first `# ` heading, else the id), split into passages of a few sentences."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SUFFIXES = (".md", ".txt")


@dataclass(frozen=True, slots=True)
class Passage:
    doc_id: str
    title: str
    text: str


def load_passages(folder: Path, sentences_per_passage: int = 4) -> list[Passage]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no documents (*.md or *.txt files) to index")
    passages = []
    for path in files:
        doc_id = path.relative_to(folder).with_suffix("").as_posix()
        title, body = _title_and_body(path.read_text(encoding="utf-8"), doc_id)
        sentences = [s for s in _SENTENCE_END.split(body) if s]
        for start in range(0, len(sentences), sentences_per_passage):
            passages.append(Passage(doc_id, title, " ".join(sentences[start : start + sentences_per_passage])))
    return passages


def _title_and_body(text: str, doc_id: str) -> tuple[str, str]:
    title = doc_id
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("# ") and title == doc_id and not lines:
            title = line.removeprefix("# ").strip()
        elif line.strip():
            lines.append(line.strip())
    return title, " ".join(lines)
