"""The routing seam: filters narrow the candidates, weighted scorers rate them, a picker chooses one.

Plugins are small classes; profiles (profiles.py) combine them by name. What several plugins need about the
prompt (its chunk hashes, its estimated token count) is computed once per request, on the RouteContext.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from gateway.routing.decision import Decision
from gateway.routing.load import EndpointLoad
from gateway.routing.prompt import DEFAULT_CHUNK_CHARS, PromptChunks, prompt_chunks
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.openai import OpenAIRequest

DEFAULT_BLOCK_SIZE = 16  # vLLM's default on GPUs; workers report theirs in vllm:cache_config_info


@dataclass(slots=True)
class Candidate:
    endpoint: Endpoint
    load: EndpointLoad

    @property
    def replica_id(self) -> str:
        return self.endpoint.replica_id


@dataclass(slots=True)
class RouteContext:
    """One request as routing sees it."""

    service: ServiceInfo
    route: str
    request: OpenAIRequest
    body_size: int = 0
    session: str | None = None
    pin: str | None = None  # x-llmserve-revision: latest, prev or a revision's name
    prompt_tokens: int = 0  # the prompt's tokens: exact for token ids, else estimated (set by the scheduler)
    chars_per_token: float = 4.0  # the service's learned ratio (set by the scheduler)
    expected_tokens: int = 0  # prompt + expected output: the load this request adds
    scratch: dict[str, object] = field(default_factory=dict)  # per-request values plugins compute once
    decision: Decision | None = None  # what the scheduler decided, and why (set by Scheduler.assign)
    _chunks: dict[int, PromptChunks] = field(default_factory=dict)

    def chunks(self, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> PromptChunks:
        """The prompt's chained chunk hashes (computed once per chunk size)."""
        chunks = self._chunks.get(chunk_chars)
        if chunks is None:
            chunks = self._chunks[chunk_chars] = prompt_chunks(self.request, chunk_chars)
        return chunks

    def tokens_of(self, size: int, exact: bool) -> int:
        """A prompt size (prompt.py: characters, or tokens when `exact`) in tokens."""
        return size if exact else round(size / self.chars_per_token)

    def block_size(self, candidates: list[Candidate]) -> int:
        for candidate in candidates:
            scraped = candidate.load.scraped
            if scraped is not None and scraped.block_size:
                return scraped.block_size
        return DEFAULT_BLOCK_SIZE


def uncached_prompt_tokens(ctx: RouteContext, candidate: Candidate, prompt_tokens: int) -> int:
    """Prompt tokens `candidate` would have to compute: all of them, less the prefix it probably holds (known when
    a prefix scorer ran for this request)."""
    matched = ctx.scratch.get("prefix-matched-tokens")
    if isinstance(matched, dict):
        return max(0, prompt_tokens - int(matched.get(candidate.replica_id, 0)))
    return prompt_tokens


class Plugin(Protocol):
    name: ClassVar[str]


class Filter(Plugin, Protocol):
    def filter(self, ctx: RouteContext, candidates: list[Candidate]) -> list[Candidate]: ...


class Scorer(Plugin, Protocol):
    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        """One score in [0, 1] per candidate (higher is better)."""
        ...


class Picker(Plugin, Protocol):
    def pick(self, ctx: RouteContext, candidates: list[Candidate], scores: list[float]) -> Candidate: ...


class Learner(Protocol):
    def learn(self, ctx: RouteContext, chosen: Candidate) -> None:
        """Called with the decision, for plugins that keep state (prefix index, sessions, turns)."""
        ...


class Forgetter(Protocol):
    def forget(self, service: str, live: set[str]) -> None:
        """Drop state about replicas of `service` that are no longer in `live`."""
        ...
