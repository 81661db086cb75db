"""The loop that scrapes every ready replica's /metrics on an interval and records it on the load ledger."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.upstream import UpstreamError, UpstreamPool
from llmserve.endpoints import Endpoint, EndpointReader
from llmserve.protocol.vllm_metrics import Scraped, parse_vllm_metrics

if TYPE_CHECKING:  # the ledger imports routing's EndpointLoad
    from gateway.ledger import LoadLedger

log = logging.getLogger("llmserve.gateway.routing")


class SignalScraper:
    """Scrapes /metrics of every ready replica every `interval_s` and records it on the load ledger."""

    def __init__(
        self,
        endpoints: EndpointReader,
        ledger: LoadLedger,
        pool: UpstreamPool,
        *,
        interval_s: float = 0.5,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.ledger = ledger
        self.pool = pool
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._first_scrapes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics scraper")
        self.endpoints.subscribe(self._endpoints_changed)

    def _endpoints_changed(self, service: str) -> None:
        """A replica just became ready: read its signals now (block size above all) rather than at the next tick,
        so that the first requests routed to it are hashed the way the rest will be."""
        if self._task is None or self._task.done():
            return
        for endpoint in self.endpoints.ready_endpoints(service):
            if self.ledger.load(endpoint).scraped_at is None:
                task = asyncio.get_running_loop().create_task(self._scrape(endpoint))
                self._first_scrapes.add(task)
                task.add_done_callback(self._first_scrapes.discard)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def scrape_once(self) -> None:
        ready = [e for s in self.endpoints.services() for e in self.endpoints.ready_endpoints(s.name)]
        self.ledger.forget_except({e.replica_id for e in ready})
        await asyncio.gather(*(self._scrape(e) for e in ready))

    async def _run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.scrape_once()
            except Exception:
                log.exception("scraping worker metrics failed")
            await asyncio.sleep(max(0.0, self.interval_s - (self.clock() - started)))

    async def _scrape(self, endpoint: Endpoint) -> None:
        scraped: Scraped | None = None
        try:
            response = await self.pool.request(
                endpoint.url, b"GET", b"/metrics", [], b"", header_timeout=self.timeout_s
            )
            body = await asyncio.wait_for(response.read(), self.timeout_s)
            if response.status == 200:
                scraped = parse_vllm_metrics(body.decode("utf-8", "replace"))
        except (UpstreamError, TimeoutError):
            scraped = None
        self.ledger.record_scrape(endpoint, scraped, self.clock())
