"""Scorers: rate each candidate in [0, 1]; a profile sums them with weights.

Load scorers score relative to the busiest candidate (1 - load / max load), so they are comparable across
scorers and stay meaningful however large the numbers are.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.routing.base import DEFAULT_BLOCK_SIZE, Candidate, RouteContext, uncached_prompt_tokens
from gateway.routing.prefix import PrefixIndex
from gateway.routing.prompt import DEFAULT_CHUNK_CHARS, message_text
from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _relative(values: list[float]) -> list[float]:
    top = max(values)
    if top <= 0:
        return [1.0] * len(values)
    return [1.0 - v / top for v in values]


def _min_max(values: list[float]) -> list[float]:
    """`(max - v) / (max - min)`: the least loaded scores 1, the busiest 0; all equal: all 1 (llm-d's scaling)."""
    low, top = min(values), max(values)
    if top <= low:
        return [1.0] * len(values)
    return [(top - v) / (top - low) for v in values]


class LoadParams(_Params):
    scale: Literal["relative", "min-max"] = Field(
        default="relative",
        description="relative: 1 - load / busiest load; min-max: (busiest - load) / (busiest - least), the "
        "scaling of llm-d's queue and active-request scorers (the least-loaded replica always scores 1).",
    )


class LoadScorer:
    """Scores `1 - load / busiest candidate's load` (or min-max scaled), for the load measure a subclass defines
    in `load()`."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = LoadParams

    def __init__(self, params: BaseModel) -> None:
        self.scale = _min_max if isinstance(params, LoadParams) and params.scale == "min-max" else _relative

    def load(self, candidate: Candidate) -> float:
        raise NotImplementedError

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        return self.scale([self.load(c) for c in candidates])


class NoParams(_Params):
    pass


class QueueDepth(LoadScorer):
    """Fewer waiting requests is better (vllm:num_requests_waiting + what we sent since the scrape)."""

    name = "queue-depth"

    def load(self, candidate: Candidate) -> float:
        return candidate.load.queued


class RunningRequests(LoadScorer):
    """Fewer running + waiting requests is better (the freshest estimate)."""

    name = "running-requests"

    def load(self, candidate: Candidate) -> float:
        return candidate.load.requests


class LeastRequest(LoadScorer):
    """Fewer requests in flight from this gateway is better (a classic least-request balancer)."""

    name = "least-request"

    def load(self, candidate: Candidate) -> float:
        return float(candidate.load.in_flight)


class InFlightTokens(LoadScorer):
    """Fewer tokens in flight (prompt + expected output of open requests, tracked by the gateway) is better."""

    name = "inflight-tokens"

    def load(self, candidate: Candidate) -> float:
        return float(candidate.load.in_flight_tokens)


class KVCache:
    """More free KV cache is better (vllm:kv_cache_usage_perc, or the older vllm:gpu_cache_usage_perc)."""

    name: ClassVar[str] = "kv-cache"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel) -> None:
        pass

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        return [max(0.0, 1.0 - c.load.kv_usage) for c in candidates]


class PrefixCache:
    """The share of the prompt the replica probably has cached: its leading chunks (prompt.py) that the replica's
    index (learned from our decisions) holds. The index keeps about as much per replica as its KV cache holds
    (vllm:cache_config_info's blocks, in characters by the service's learned characters per token)."""

    name: ClassVar[str] = "prefix-cache"

    class Params(_Params):
        capacity_blocks: int = Field(
            default=65536, ge=1, alias="capacityBlocks", description="Prompt chunks remembered per replica at most."
        )
        chunk_chars: int = Field(
            default=DEFAULT_CHUNK_CHARS,
            ge=16,
            alias="chunkChars",
            description="Characters per hashed chunk: a match is known to within one chunk (~chunkChars / 4 "
            "tokens); smaller costs more hashing per request.",
        )

    def __init__(self, params: Params) -> None:
        self.capacity = params.capacity_blocks
        self.chunk_chars = params.chunk_chars
        self._indexes: dict[str, PrefixIndex] = {}  # one per service

    def _index(self, ctx: RouteContext) -> PrefixIndex:
        index = self._indexes.get(ctx.service.name)
        if index is None:
            index = self._indexes[ctx.service.name] = PrefixIndex(self.capacity)
        return index

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        chunks = ctx.chunks(self.chunk_chars)
        if not chunks.hashes or chunks.size <= 0:
            return [0.0] * len(candidates)
        matched = self._index(ctx).matched_blocks(chunks.hashes, [c.replica_id for c in candidates])
        ends = chunks.ends
        size = {r: ends[depth - 1] if depth else 0 for r, depth in matched.items()}
        ctx.scratch["prefix-matched-tokens"] = {
            r: min(ctx.prompt_tokens, ctx.tokens_of(chars, chunks.exact)) for r, chars in size.items()
        }
        return [size[c.replica_id] / chunks.size for c in candidates]

    def learn(self, ctx: RouteContext, chosen: Candidate) -> None:
        chunks = ctx.chunks(self.chunk_chars)
        scraped = chosen.load.scraped
        capacity = None
        if scraped is not None and scraped.num_blocks and chunks.hashes:
            held = scraped.num_blocks * (scraped.block_size or DEFAULT_BLOCK_SIZE)  # tokens
            per_chunk = chunks.size / len(chunks.hashes)  # characters (or tokens) per chunk of this prompt
            per_token = 1.0 if chunks.exact else ctx.chars_per_token
            capacity = min(self.capacity, max(1, int(held * per_token / max(per_chunk, 1.0))))
        self._index(ctx).record(chosen.replica_id, chunks.hashes, capacity, chunks.segments)

    def forget(self, service: str, live: set[str]) -> None:
        index = self._indexes.get(service)
        if index is not None:
            for replica in [r for r in index.replicas() if r not in live]:
                index.forget(replica)


class PrefillWait:
    """The time to a first token, estimated in prompt tokens: the prefill work already queued on the replica (sent
    by this gateway, first token not back yet) plus this prompt's tokens the replica does not have cached.

    Affinity and load in one number: a replica holding the prompt's prefix wins unless it is busy enough that a
    cold replica would answer sooner. Needs the prefix-cache scorer before it (for the cached part).
    """

    name: ClassVar[str] = "prefill-wait"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel) -> None:
        pass

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        prompt = ctx.prompt_tokens
        costs = [c.load.pending_prefill + uncached_prompt_tokens(ctx, c, prompt) + 1 for c in candidates]
        best = min(costs)
        return [best / cost for cost in costs]


class SessionAffinity:
    """The replica that served this session before (header, default `x-session-id`) scores 1."""

    name: ClassVar[str] = "session-affinity"

    class Params(_Params):
        max_sessions: int = Field(default=100_000, ge=1, alias="maxSessions")

    def __init__(self, params: Params) -> None:
        self.max_sessions = params.max_sessions
        self._sessions: OrderedDict[tuple[str, str], str] = OrderedDict()

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        if ctx.session is None:
            return [0.0] * len(candidates)
        replica = self._sessions.get((ctx.service.name, ctx.session))
        return [1.0 if c.replica_id == replica else 0.0 for c in candidates]

    def learn(self, ctx: RouteContext, chosen: Candidate) -> None:
        if ctx.session is None:
            return
        key = (ctx.service.name, ctx.session)
        self._sessions[key] = chosen.replica_id
        self._sessions.move_to_end(key)
        if len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)


class LoraAffinity:
    """For a request naming a LoRA adapter: replicas running it score 1, queued 0.8, with a free slot 0.5."""

    name: ClassVar[str] = "lora-affinity"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel) -> None:
        pass

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        adapter = ctx.request.model
        if adapter == ctx.service.model_name:
            return [1.0] * len(candidates)
        scores = []
        for candidate in candidates:
            scraped = candidate.load.scraped
            if scraped is None:
                scores.append(0.5)
            elif adapter in scraped.lora_running:
                scores.append(1.0)
            elif adapter in scraped.lora_waiting:
                scores.append(0.8)
            elif len(scraped.lora_running) < scraped.max_lora:
                scores.append(0.5)
            else:
                scores.append(0.0)
        return scores


def prompt_text(ctx: RouteContext) -> str:
    request = ctx.request
    if isinstance(request, ChatCompletionRequest):
        return "".join(message_text(m) for m in request.messages)
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        return prompt if isinstance(prompt, str) else str(prompt[:1])
    return ""


class CharPrefix:
    """production-stack's prefix-aware routing, for comparison: 128-character chunk hashes; the replicas with the
    longest matched prefix score 1 (so the picker chooses among them at random), or all score 0 if none matched."""

    name: ClassVar[str] = "char-prefix"

    class Params(_Params):
        chunk_chars: int = Field(default=128, ge=1, alias="chunkChars")
        capacity_chunks: int = Field(default=65536, ge=1, alias="capacityChunks")

    def __init__(self, params: Params) -> None:
        self.chunk = params.chunk_chars
        self._indexes: dict[str, PrefixIndex] = {}
        self.capacity = params.capacity_chunks

    def _index(self, ctx: RouteContext) -> PrefixIndex:
        index = self._indexes.get(ctx.service.name)
        if index is None:
            index = self._indexes[ctx.service.name] = PrefixIndex(self.capacity)
        return index

    def _hashes(self, ctx: RouteContext) -> list[int]:
        cached = ctx.scratch.get("char-prefix")
        if isinstance(cached, list):
            return cached
        text = prompt_text(ctx).encode()
        hashes: list[int] = []
        previous = b""
        for start in range(0, len(text), self.chunk):
            previous = hashlib.blake2b(previous + text[start : start + self.chunk], digest_size=8).digest()
            hashes.append(int.from_bytes(previous, "little"))
        ctx.scratch["char-prefix"] = hashes
        return hashes

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        matched = self._index(ctx).matched_blocks(self._hashes(ctx), [c.replica_id for c in candidates])
        best = max(matched.values(), default=0)
        if best == 0:
            return [0.0] * len(candidates)
        return [1.0 if matched[c.replica_id] == best else 0.0 for c in candidates]

    def learn(self, ctx: RouteContext, chosen: Candidate) -> None:
        self._index(ctx).record(chosen.replica_id, self._hashes(ctx))

    def forget(self, service: str, live: set[str]) -> None:
        index = self._indexes.get(service)
        if index is not None:
            for replica in [r for r in index.replicas() if r not in live]:
                index.forget(replica)


SCORERS = {
    cls.name: cls
    for cls in (
        QueueDepth,
        RunningRequests,
        LeastRequest,
        KVCache,
        InFlightTokens,
        PrefixCache,
        PrefillWait,
        SessionAffinity,
        LoraAffinity,
        CharPrefix,
    )
}
