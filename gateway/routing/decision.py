"""What a routing decision was, for operators: the profile, the scorer that won it, and the prefix-cache estimate.

The scheduler leaves one `Decision` on each request's RouteContext; the dispatch path turns it into metrics
(`llmserve_routing_*`) and span attributes. Computing it costs a few subtractions per scorer, and only when there
was a choice to make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ONLY_REPLICA = "only-replica"  # one candidate: nothing was chosen
FALLBACK = "fallback"  # the profile raised: the least-loaded replica was taken
TIE = "tie"  # no scorer set the chosen replica apart: the picker chose among equals


@dataclass(frozen=True, slots=True)
class Decision:
    profile: str
    scorer: str
    """The scorer that won the choice (its name), or ONLY_REPLICA, FALLBACK, TIE, or the picker's name for a
    profile without scorers (round-robin)."""
    prompt_tokens: int | None = None
    """The prompt's tokens as routing estimated them (exact for token ids); None when no prefix scorer ran (one
    candidate, or a profile without the prefix-cache scorer)."""
    prefix_hit_tokens: int | None = None
    """Of those, the tokens routing assumed the chosen replica holds in its prefix cache (the prefix-cache
    scorer's match, to within one chunk). None with no count."""

    @property
    def prefix_hit(self) -> float | None:
        """The share of the prompt estimated to be cached on the chosen replica."""
        if not self.prompt_tokens or self.prefix_hit_tokens is None:
            return None
        return self.prefix_hit_tokens / self.prompt_tokens


def winning_scorer(
    names: Sequence[str],
    weights: Sequence[float],
    scores: Sequence[Sequence[float]],
    totals: Sequence[float],
    chosen: int,
) -> str | None:
    """The scorer that did most to put candidate `chosen` ahead of the runner-up (the best other candidate by
    total): the largest `weight * (score[chosen] - score[runner_up])`. None when no scorer gave it a lead."""
    runner_up = max((i for i in range(len(totals)) if i != chosen), key=totals.__getitem__, default=None)
    if runner_up is None:
        return None
    best, margin = None, 1e-9
    for name, weight, values in zip(names, weights, scores, strict=True):
        lead = weight * (values[chosen] - values[runner_up])
        if lead > margin:
            best, margin = name, lead
    return best
