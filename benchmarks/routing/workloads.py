"""Request traces for the routing benchmark, generated from a seed (the same trace for every policy).

(a) rag:    a corpus of long documents with Zipf popularity (a few are hot), each request = one document +
            a short new question; open-loop Poisson arrivals.
(b) chat:   multi-turn sessions arriving as a Poisson process; each turn sends the whole conversation so far
            (system prompt, earlier turns, a new user message); a session's next turn starts after its previous
            answer plus a think time. chat-shared: the same, the sessions sharing 4 system prompts.
(c) random: unique prompts, nothing shared; open-loop Poisson arrivals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WORDS = """model cache token block prefix replica gateway request answer question document section table figure
result method data system user assistant river mountain city garden market library engine server
network memory latency throughput batch schedule queue window policy profile metric signal worker"""
VOCABULARY = WORDS.split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


@dataclass
class Turn:
    """One request: when it may start (relative to the start, or to the previous turn of its session)."""

    at: float
    messages: list[dict[str, str]]
    max_tokens: int
    session: str | None = None


@dataclass
class Session:
    """Chat turns sent one after another; each turn's messages are built from the previous answers."""

    name: str
    start: float
    system: str
    questions: list[str]
    think_s: float
    max_tokens: int


@dataclass
class Workload:
    name: str
    duration_s: float
    turns: list[Turn] = field(default_factory=list)  # independent requests (rag, random)
    sessions: list[Session] = field(default_factory=list)  # dependent turns (chat)


def _poisson(rng: random.Random, rate: float, duration: float) -> list[float]:
    times, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now >= duration:
            return times
        times.append(now)


def rag(seed: int, *, duration_s: float, rate: float, documents: int = 32, doc_words: int = 2400) -> Workload:
    rng = random.Random(seed)
    corpus = [f"Document {d}. " + text(rng, doc_words) for d in range(documents)]
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(documents)]  # Zipf-like: a few hot documents
    workload = Workload("rag", duration_s)
    for at in _poisson(rng, rate, duration_s):
        doc = rng.choices(range(documents), weights=weights, k=1)[0]
        messages = [
            {"role": "system", "content": "Answer from the document.\n" + corpus[doc]},
            {"role": "user", "content": f"Question {rng.randrange(10**6)}: " + text(rng, 20)},
        ]
        workload.turns.append(Turn(at=at, messages=messages, max_tokens=64))
    return workload


def chat(
    seed: int,
    *,
    duration_s: float,
    rate: float,
    turns: int = 6,
    think_s: float = 1.0,
    system_words: int = 300,
    system_prompts: int | None = None,
) -> Workload:
    """Sessions start as a Poisson process of `rate / turns` per second over `duration_s` (so `rate` is the request
    rate they offer once running); each sends `turns` turns, the next one `think_s` after the previous answer.

    `system_prompts`: None, each session has its own system prompt; K, the sessions share K of them (a chat
    product: many users, a few assistants), so a first turn can hit a system prompt another session cached."""
    rng = random.Random(seed)
    workload = Workload("chat" if system_prompts is None else "chat-shared", duration_s)
    shared = [f"You are assistant {k}. " + text(rng, system_words) for k in range(system_prompts or 0)]
    for s, start in enumerate(_poisson(rng, rate / turns, duration_s)):
        workload.sessions.append(
            Session(
                name=f"session-{s}",
                start=start,
                system=shared[s % len(shared)] if shared else f"You are assistant {s}. " + text(rng, system_words),
                questions=[text(rng, 80) for _ in range(turns)],
                think_s=think_s,
                max_tokens=96,
            )
        )
    return workload


def build(name: str, seed: int, *, duration_s: float, rate: float) -> Workload:
    """A workload by name (rag, chat, chat-shared, random) at `rate` requests per second, with the defaults above."""
    if name == "rag":
        return rag(seed, duration_s=duration_s, rate=rate)
    if name == "chat":
        return chat(seed, duration_s=duration_s, rate=rate)
    if name == "chat-shared":
        return chat(seed, duration_s=duration_s, rate=rate, system_prompts=4)
    if name == "random":
        return random_prompts(seed, duration_s=duration_s, rate=rate)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


WORKLOADS = ("rag", "chat", "chat-shared", "random")
CLOSED_LOOP = ("chat", "chat-shared")  # sessions wait for each answer


def session_lifetime_s(turns: int = 6, think_s: float = 1.0, answer_s: float = 1.0) -> float:
    """About how long a chat session lasts when nothing queues; a chat run's warm-up is one lifetime, so the
    measured window sees every turn in its steady-state proportion."""
    return turns * (think_s + answer_s)


def random_prompts(seed: int, *, duration_s: float, rate: float, words: int = 600) -> Workload:
    rng = random.Random(seed)
    workload = Workload("random", duration_s)
    for at in _poisson(rng, rate, duration_s):
        messages = [{"role": "user", "content": f"{rng.randrange(10**9)} " + text(rng, words)}]
        workload.turns.append(Turn(at=at, messages=messages, max_tokens=96))
    return workload
