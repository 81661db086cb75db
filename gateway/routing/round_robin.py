"""Round-robin over the ready endpoints of each service."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.base import RouteContext
from llmserve.endpoints import Endpoint


class RoundRobin:
    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, ctx: RouteContext, endpoints: Sequence[Endpoint]) -> Endpoint:
        name = ctx.service.name
        turn = self._next.get(name, 0)
        self._next[name] = turn + 1
        return endpoints[turn % len(endpoints)]
