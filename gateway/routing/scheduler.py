"""The scheduler: for each request, run the service's routing profile over the ready replicas.

It estimates what plugins need once (the prompt's tokens, from its characters and the service's learned
characters per token: tokens.py; the expected token load), fails open to the least-loaded replica if a plugin
raises, and dispatches the request on the gateway's load ledger (counted until released). The prompt tokens a
worker reports in its answer teach the ratio (`observe_usage`). What it decided and why (the profile, the winning
scorer, the prefix-cache estimate) is left on the request's RouteContext as `ctx.decision`
(gateway/routing/decision.py).
V2 services route with `least-request` unless they name a profile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.routing.base import Candidate, RouteContext, uncached_prompt_tokens
from gateway.routing.decision import FALLBACK, ONLY_REPLICA, Decision
from gateway.routing.profiles import DEFAULT_PROFILE, Profile
from gateway.routing.prompt import prompt_size
from gateway.routing.tokens import TokenRatio
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.openai import ChatCompletionRequest, CompletionRequest, OpenAIRequest

if TYPE_CHECKING:  # the ledger imports routing's EndpointLoad
    from gateway.ledger import Dispatched, LoadLedger

log = logging.getLogger("llmserve.gateway.routing")

V2_PROFILE = "least-request"


class Scheduler:
    def __init__(
        self,
        profiles: Mapping[str, Profile],
        ledger: LoadLedger,
        tokens: TokenRatio | None = None,
        *,
        default_profile: str = DEFAULT_PROFILE,
        default_v2_profile: str = V2_PROFILE,
        default_output_tokens: int = 256,
        prune_every: int = 512,
    ) -> None:
        for name in (default_profile, default_v2_profile):
            if name not in profiles:
                raise ValueError(f"no routing profile named '{name}'")
        self.profiles = profiles
        self.ledger = ledger
        self.default_v2_profile = default_v2_profile
        self.tokens = tokens or TokenRatio()
        self.default_profile = default_profile
        self.default_output_tokens = default_output_tokens
        self.prune_every = prune_every
        self._decisions = 0
        self._last_failure_log = 0.0

    def profile_for(self, service: ServiceInfo) -> Profile:
        default = self.default_v2_profile if service.protocol == "v2" else self.default_profile
        return self.profiles.get(service.routing_profile or default) or self.profiles[default]

    async def assign(self, ctx: RouteContext, endpoints: Sequence[Endpoint]) -> Dispatched:
        """Choose a replica among `endpoints` (not empty) and dispatch the request to it on the ledger."""
        profile = self.profile_for(ctx.service)
        ledger = self.ledger
        candidates = [Candidate(e, ledger.load(e)) for e in endpoints]
        size, exact = prompt_size(ctx.request)
        ctx.chars_per_token = self.tokens.chars_per_token(ctx.service.name)
        prompt = ctx.prompt_tokens = ctx.tokens_of(size, exact) if size else ctx.body_size // 4  # V2: a guess
        ctx.expected_tokens = prompt + self._expected_output(ctx)
        if len(candidates) == 1:
            chosen, scorer = candidates[0], ONLY_REPLICA  # nothing to choose (and nothing worth hashing for)
        else:
            try:
                chosen, scorer = profile.decide(ctx, candidates)
            except Exception:
                chosen = min(candidates, key=lambda c: (c.load.requests, c.load.in_flight_tokens))
                scorer = FALLBACK
                self._log_failure(profile)
        self._decisions += 1
        if self._decisions % self.prune_every == 0:
            self._prune(profile, ctx.service.name, endpoints)
        uncached = uncached_prompt_tokens(ctx, chosen, prompt)
        counted = "prefix-matched-tokens" in ctx.scratch  # a prefix scorer estimated the hit
        ctx.decision = Decision(profile.name, scorer, prompt if counted else None,
                                prompt - uncached if counted else None)  # fmt: skip
        return ledger.dispatch(chosen.endpoint, ctx.expected_tokens, prefill_tokens=uncached)

    def observe_usage(self, ctx: RouteContext, prompt_tokens: int | None) -> None:
        """A worker answered `ctx`'s request and counted `prompt_tokens` (its usage): learn characters per token."""
        if not prompt_tokens or _batched(ctx.request):
            return
        size, exact = prompt_size(ctx.request)
        if not exact:
            self.tokens.observe(ctx.service.name, size, prompt_tokens)

    def _expected_output(self, ctx: RouteContext) -> int:
        request = ctx.request
        limit = request.max_tokens
        if limit is None and isinstance(request, ChatCompletionRequest):
            limit = request.max_completion_tokens
        return (limit if limit is not None else self.default_output_tokens) * (request.n or 1)

    def _prune(self, profile: Profile, service: str, endpoints: Sequence[Endpoint]) -> None:
        live = {e.replica_id for e in endpoints}
        for plugin in profile.plugins():
            forget = getattr(plugin, "forget", None)
            if forget is not None:
                forget(service, live)

    def _log_failure(self, profile: Profile) -> None:
        now = time.monotonic()
        if now - self._last_failure_log > 60:
            self._last_failure_log = now
            log.exception("routing profile '%s' failed; routed to the least-loaded replica", profile.name)


def _batched(request: OpenAIRequest) -> bool:
    """A completion with several prompts (usage counts them all; routing looks at the first)."""
    if not isinstance(request, CompletionRequest) or not isinstance(request.prompt, list):
        return False
    return len(request.prompt) > 1 and not isinstance(request.prompt[0], int)
