"""Progress of the long steps `llmserve up` waits on: pulling a model, starting a replica, filling the warm pool.

The controller logs when each step begins and ends; in between a vLLM replica can take a minute to start and a
pull longer, in silence. `StartupProgress.lines(status, now)` reads the controller's status (the shape of GET
/control/v1/status) and says what is still under way every `every_s` (the controller logs when each begins
and ends), and when the warm pool's readiness changes. A pure function of its inputs and the previous call's
(tests pass `now`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_STARTING = ("starting", "binding")


@dataclass
class StartupProgress:
    every_s: float = 10.0
    _since: dict[str, float] = field(default_factory=dict)  # step -> when first seen
    _said: dict[str, float] = field(default_factory=dict)  # step -> when last reported
    _pool: tuple[int, int] | None = None

    def lines(self, status: Mapping[str, Any], now: float) -> list[str]:
        steps: dict[str, str] = {}
        for service in status.get("services") or ():
            name = service.get("name")
            if any(r.get("model_dir") is None and not r.get("pull_error") for r in service.get("revisions") or ()):
                steps[f"pull {name}"] = f"{name}: pulling the model"
            for replica in service.get("replicas") or ():
                if replica.get("state") in _STARTING:
                    steps[f"start {replica.get('id')}"] = f"{name}: replica {replica.get('id')} starting"
        out = []
        for step, text in steps.items():
            since = self._since.setdefault(step, now)
            if now - self._said.get(step, since) >= self.every_s:  # the controller logged when it began
                out.append(f"{text} ({now - since:.0f} s so far)…")
                self._said[step] = now
        for step in [s for s in self._since if s not in steps]:  # done: the controller logged how it ended
            self._since.pop(step)
            self._said.pop(step, None)
        out += self._pool_lines(status)
        return out

    def _pool_lines(self, status: Mapping[str, Any]) -> list[str]:
        pool = (status.get("backend") or {}).get("warm_pool")
        if not pool:
            return []
        processes = pool.get("processes") or ()
        ready = sum(1 for p in processes if p.get("state") == "idle")
        starting = sum(1 for p in processes if p.get("state") == "starting")
        now = (ready, starting)
        if now == self._pool:
            return []
        self._pool = now
        size = pool.get("size", len(processes))
        line = f"warm pool: {ready}/{size} processes ready"
        return [line + (f", {starting} importing vLLM…" if starting else "")]
