"""Parsing a vLLM worker's Prometheus /metrics into the signals llmserve acts on (routing, draining).

Both metric generations are read: `vllm:kv_cache_usage_perc` (current) and `vllm:gpu_cache_usage_perc` (older
vLLM, production-stack, AIBrix). Values of several engines (data parallel) are summed; KV use is averaged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(slots=True)
class Scraped:
    """One reading of a vLLM worker's /metrics (sums over its engines)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0  # 0..1
    block_size: int | None = None
    num_blocks: int | None = None
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    lora_running: frozenset[str] = frozenset()
    lora_waiting: frozenset[str] = frozenset()
    max_lora: int = 0


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
