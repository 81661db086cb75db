"""The routing seam: filters narrow the candidates, weighted scorers rate them, a picker chooses one.

Plugins are small classes; profiles (profiles.py) combine them by name. A plugin that needs the prompt's token
ids says so (`needs_tokens`), and the scheduler computes them once per request.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from gateway.routing.decision import Decision
from gateway.routing.load import EndpointLoad
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
    tokens: array[int] | None = None  # the prompt's token ids, when a plugin needs them
    expected_tokens: int = 0  # prompt + expected output: the load this request adds
    scratch: dict[str, object] = field(default_factory=dict)  # per-request values plugins compute once
    decision: Decision | None = None  # what the scheduler decided, and why (set by Scheduler.assign)
    _hashes: dict[int, list[int]] = field(default_factory=dict)

    def block_hashes(self, block_size: int) -> list[int]:
        """Chained hashes of the prompt's full blocks (computed once per block size)."""
        hashes = self._hashes.get(block_size)
        if hashes is None:
            from gateway.routing.prefix import block_hashes

            hashes = self._hashes[block_size] = block_hashes(self.tokens or array("I"), block_size)
        return hashes

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
    needs_tokens: ClassVar[bool]


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
