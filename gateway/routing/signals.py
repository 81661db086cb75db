"""Reading vLLM's /metrics: the parser, and the loop that scrapes every ready replica on an interval.

Both metric generations are read: `vllm:kv_cache_usage_perc` (current) and `vllm:gpu_cache_usage_perc` (older
vLLM, production-stack, AIBrix). Values of several engines (data parallel) are summed; KV use is averaged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

from gateway.routing.load import LoadBoard, Scraped
from gateway.upstream import UpstreamError, UpstreamPool
from llmserve.endpoints import Endpoint, EndpointReader

log = logging.getLogger("llmserve.gateway.routing")

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_WANTED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_hits_total",
    "vllm:lora_requests_info",
)


def _adapters(value: str) -> frozenset[str]:
    return frozenset(a for a in value.split(",") if a)


def parse_vllm_metrics(text: str) -> Scraped:
    """The routing signals in a Prometheus exposition from a vLLM worker (unknown lines are skipped)."""
    scraped = Scraped()
    kv_values: list[float] = []
    old_kv_values: list[float] = []
    lora_seen_at = -1.0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name not in _WANTED:
            continue
        labels_text, _, value_text = line.rpartition(" ")
        try:
            value = float(value_text)
        except ValueError:
            continue
        if name == "vllm:num_requests_running":
            scraped.running += value
        elif name == "vllm:num_requests_waiting":
            scraped.waiting += value
        elif name == "vllm:kv_cache_usage_perc":
            kv_values.append(value)
        elif name == "vllm:gpu_cache_usage_perc":
            old_kv_values.append(value)
        elif name in ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"):
            scraped.prefix_queries += value
        elif name in ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"):
            scraped.prefix_hits += value
        elif name == "vllm:cache_config_info":
            labels = dict(_LABEL.findall(labels_text))
            if labels.get("block_size", "").isdigit():
                scraped.block_size = int(labels["block_size"])
            if labels.get("num_gpu_blocks", "").isdigit():
                scraped.num_blocks = int(labels["num_gpu_blocks"])
        elif name == "vllm:lora_requests_info" and value >= lora_seen_at:
            # One series per change, valued by its timestamp: the newest one is current.
            lora_seen_at = value
            labels = dict(_LABEL.findall(labels_text))
            scraped.lora_running = _adapters(labels.get("running_lora_adapters", ""))
            scraped.lora_waiting = _adapters(labels.get("waiting_lora_adapters", ""))
            max_lora = labels.get("max_lora", "0")
            scraped.max_lora = int(max_lora) if max_lora.isdigit() else 0
    kv = kv_values or old_kv_values
    if kv:
        scraped.kv_usage = sum(kv) / len(kv)
    return scraped


class SignalScraper:
    """Scrapes /metrics of every ready replica every `interval_s` and records it on the load board."""

    def __init__(
        self,
        endpoints: EndpointReader,
        board: LoadBoard,
        pool: UpstreamPool,
        *,
        interval_s: float = 0.5,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.board = board
        self.pool = pool
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics scraper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def scrape_once(self) -> None:
        ready = [e for s in self.endpoints.services() for e in self.endpoints.ready_endpoints(s.name)]
        self.board.forget_except({e.replica_id for e in ready})
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
        self.board.record_scrape(endpoint, scraped, self.clock())
