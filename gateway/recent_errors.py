"""The last server-side failures this gateway answered (5xx), kept in a bounded deque for the status page.

Client mistakes (4xx) are not kept: they say nothing about the fleet and would push the interesting ones out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RecentError:
    time: float  # unix seconds
    service: str
    status: int
    message: str


class RecentErrors:
    def __init__(self, size: int = 50, clock: Callable[[], float] = time.time) -> None:
        self._errors: deque[RecentError] = deque(maxlen=size)
        self._clock = clock

    def add(self, service: str, status: int, message: str) -> None:
        self._errors.append(RecentError(self._clock(), service, status, message[:500]))

    def newest_first(self) -> list[dict[str, Any]]:
        """As the status page shows them: `{"time", "service", "status", "message"}`, newest first."""
        return [
            {"time": e.time, "service": e.service, "status": e.status, "message": e.message}
            for e in reversed(self._errors)
        ]
