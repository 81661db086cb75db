"""Filters: drop candidates before scoring. A filter that would drop every candidate is ignored (fail open)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.routing.base import Candidate, RouteContext


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FreshSignals:
    """Drop replicas whose metrics are stale or failing to scrape (they may be overloaded or dying)."""

    name: ClassVar[str] = "fresh-signals"

    class Params(_Params):
        stale_after_s: float = Field(default=3.0, gt=0, alias="staleAfterSeconds")

    def __init__(self, params: Params, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = params.stale_after_s
        self.clock = clock

    def filter(self, ctx: RouteContext, candidates: list[Candidate]) -> list[Candidate]:
        now = self.clock()
        return [c for c in candidates if not c.load.stale(now, self.stale_after_s)]


class LoadCap:
    """Against herding: drop replicas with more than `maxExcessRequests` above the least-loaded one.

    Runs before the scorers, so no affinity (prefix, session, LoRA) can pile work on one warm replica while
    others idle; the least-loaded replica always survives.
    """

    name: ClassVar[str] = "load-cap"

    class Params(_Params):
        max_excess_requests: float = Field(default=8, ge=0, alias="maxExcessRequests")
        max_excess_ratio: float = Field(default=2.0, ge=1, alias="maxExcessRatio")

    def __init__(self, params: Params, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_excess = params.max_excess_requests
        self.max_ratio = params.max_excess_ratio

    def filter(self, ctx: RouteContext, candidates: list[Candidate]) -> list[Candidate]:
        least = min(c.load.requests for c in candidates)
        limit = max(least + self.max_excess, least * self.max_ratio)
        return [c for c in candidates if c.load.requests <= limit]


FILTERS = {cls.name: cls for cls in (FreshSignals, LoadCap)}
