"""The routing seam: a picker is handed the request's context and the ready endpoints, and returns one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llmserve.endpoints import Endpoint, ServiceInfo


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What routing may look at: the service, the route, and the parsed request."""

    service: ServiceInfo
    route: str
    body: bytes


class Picker(Protocol):
    def pick(self, ctx: RouteContext, endpoints: Sequence[Endpoint]) -> Endpoint:
        """One of `endpoints` (never empty)."""
        ...
