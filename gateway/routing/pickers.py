"""Pickers: choose one candidate from the scores."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from gateway.routing.base import Candidate, RouteContext


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaxScore:
    """The best total score; ties broken at random (so equal replicas share the load)."""

    name: ClassVar[str] = "max-score"

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, ctx: RouteContext, candidates: list[Candidate], scores: list[float]) -> Candidate:
        best = max(scores)
        tied = [c for c, s in zip(candidates, scores, strict=True) if s >= best - 1e-9]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)


class WeightedRandom:
    """A candidate drawn with probability proportional to its score (uniform when all scores are 0)."""

    name: ClassVar[str] = "weighted-random"

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, ctx: RouteContext, candidates: list[Candidate], scores: list[float]) -> Candidate:
        if sum(scores) <= 0:
            return self.rng.choice(candidates)
        return self.rng.choices(candidates, weights=scores, k=1)[0]


class RoundRobin:
    """Each replica in turn (per service), ignoring scores."""

    name: ClassVar[str] = "round-robin"

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel, rng: random.Random) -> None:
        self._turn: dict[str, int] = {}

    def pick(self, ctx: RouteContext, candidates: list[Candidate], scores: list[float]) -> Candidate:
        turn = self._turn.get(ctx.service.name, 0)
        self._turn[ctx.service.name] = turn + 1
        return candidates[turn % len(candidates)]


PICKERS = {cls.name: cls for cls in (MaxScore, WeightedRandom, RoundRobin)}
