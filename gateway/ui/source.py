"""The status page's source on a gateway: the controller's status with what this gateway knows added.

The controller's part is GET /control/v1/status, fetched through the gateway's control client (never more than
once per `max_age_s`, however many pages are open). Added from this gateway, fresh on every call:

- per replica, `load`: requests in flight from this gateway (its load ledger) and, for vLLM replicas, their
  scraped running / waiting requests and KV-cache use;
- per revision, `in_rotation`: its replicas this gateway routes to (ready, not ejected);
- `activator`: requests held per service; `errors`: the last 5xx answers, newest first;
- `gateway`: requests in flight and held per service, as this gateway counts them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from gateway.activator import Activator
from gateway.ledger import LoadLedger
from gateway.recent_errors import RecentErrors
from gateway.ui.app import StatusSource
from llmserve.endpoints import EndpointReader


class GatewayStatus:
    def __init__(
        self,
        controller: StatusSource,
        ledger: LoadLedger,
        activator: Activator,
        errors: RecentErrors,
        endpoints: EndpointReader,
        *,
        max_age_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller
        self.ledger = ledger
        self.activator = activator
        self.errors = errors
        self.endpoints = endpoints
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = asyncio.Lock()
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0

    async def __call__(self) -> dict[str, Any]:
        return self.enrich(await self._controller_status())

    async def _controller_status(self) -> dict[str, Any]:
        async with self._lock:  # concurrent pages wait for one fetch and share it
            if self._cached is None or self.clock() - self._cached_at >= self.max_age_s:
                self._cached = await self.controller()
                self._cached_at = self.clock()
            return self._cached

    def enrich(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the controller's `status` with this gateway's loads, activator queue and errors."""
        services = [self._service(s) for s in status.get("services") or ()]
        loads = self.ledger.services()
        return {
            **status,
            "services": services,
            "activator": {s["name"]: self.activator.held(s["name"]) for s in services},
            "errors": self.errors.newest_first(),
            "gateway": {name: {"in_flight": load.in_flight, "held": load.held} for name, load in list(loads.items())},
        }

    def _service(self, service: Mapping[str, Any]) -> dict[str, Any]:
        name = str(service.get("name"))
        in_rotation = Counter(e.revision for e in self.endpoints.ready_endpoints(name))
        revisions = [
            {**r, "in_rotation": in_rotation.get(str(r.get("name")), 0)} for r in service.get("revisions") or ()
        ]
        engine = service.get("protocol", "openai") == "openai"  # V2 runtimes have no vLLM signals to show
        replicas = [{**r, "load": self._load(r, engine)} for r in service.get("replicas") or ()]
        return {**service, "revisions": revisions, "replicas": replicas}

    def _load(self, replica: Mapping[str, Any], engine: bool) -> dict[str, Any] | None:
        load = self.ledger.loads.get(str(replica.get("id")))
        if load is None or (replica.get("url") and load.endpoint.url != replica["url"]):
            return None
        scraped = load.scraped if engine else None
        return {
            "in_flight": load.in_flight,
            "running": round(scraped.running) if scraped is not None else None,  # gauges of whole requests
            "waiting": round(scraped.waiting) if scraped is not None else None,
            "kv_cache_usage": scraped.kv_usage if scraped is not None else None,
        }
