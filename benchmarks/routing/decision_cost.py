"""Routing decision cost: one `Scheduler.assign` for a ~4k-token chat prompt over 64 replicas (token-aware profile).

Documents are shared across requests (RAG-like: 16 documents of ~4k tokens, a new short question each time), so
after the first sight of a document its tokens come from the per-message cache; the first sight of each document
(a cold tokenization) is reported separately. Uses the embedded model's tokenizer when it has been pulled.

    python benchmarks/routing/decision_cost.py --requests 3000 --replicas 64
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import random
import statistics
import time
from pathlib import Path

from gateway.routing import LoadBoard, RouteContext, Scheduler, load_profiles
from gateway.routing.tokens import PromptTokens
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.openai import ChatCompletionRequest
from llmserve.protocol.vllm_metrics import Scraped
from llmserve.storage import ModelCache

REPO = Path(__file__).resolve().parents[2]
TEXT = """the model serves tokens quickly while the cache keeps prefixes warm for every replica in the pool
documents questions answers routing latency throughput gateway scheduler block hash index"""
WORDS = TEXT.split()


def tokenizer_dir() -> str | None:
    for entry in ModelCache().root.glob("SmolLM2-135M-Instruct*"):
        if (entry / "tokenizer.json").is_file():
            return str(entry)
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(0)
    directory = tokenizer_dir()
    service = ServiceInfo(name="svc", model_name="m", tokenizer_dir=directory)
    endpoints = [Endpoint("svc", f"r{i}", f"http://10.0.0.{i}:8000") for i in range(args.replicas)]
    board = LoadBoard()
    now = time.monotonic()
    for i, endpoint in enumerate(endpoints):
        board.record_scrape(endpoint, Scraped(running=i % 5, waiting=i % 3, kv_usage=(i % 10) / 10, block_size=16,
                                              num_blocks=20000), now)  # fmt: skip
    tokens = PromptTokens()
    scheduler = Scheduler(load_profiles(rng=rng), board, tokens, default_profile="token-aware")
    tokens.prepare(directory)
    while directory is not None and tokens._encoders.get(directory) is None:  # noqa: ASYNC110 - loads in a thread
        await asyncio.sleep(0.05)
    documents = [" ".join(rng.choice(WORDS) for _ in range(4000)) for _ in range(16)]
    cold: list[float] = []
    warm: list[float] = []
    seen: set[int] = set()
    for i in range(args.requests):
        doc = rng.randrange(len(documents))
        request = ChatCompletionRequest.model_validate(
            {"model": "m", "max_tokens": 64, "messages": [
                {"role": "system", "content": documents[doc]},
                {"role": "user", "content": f"Question {i}: what does part {rng.randrange(100)} say?"},
            ]}
        )  # fmt: skip
        ctx = RouteContext(service=service, route="chat_completions", request=request, body_size=20000)
        started = time.perf_counter()
        assignment = await scheduler.assign(ctx, endpoints)
        elapsed = time.perf_counter() - started
        (warm if doc in seen else cold).append(elapsed)
        seen.add(doc)
        assignment.release()
        if i == 0:
            prompt_tokens = len(ctx.tokens or [])
    return {
        "prompt_tokens": float(prompt_tokens),
        "warm_p50_ms": percentile(warm, 0.5) * 1000,
        "warm_p99_ms": percentile(warm, 0.99) * 1000,
        "warm_mean_ms": statistics.fmean(warm) * 1000,
        "cold_median_ms": statistics.median(cold) * 1000,
        "cold_count": float(len(cold)),
        "tokenizer": 1.0 if directory else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routing_decision_cost.md")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    lines = [
        "# Routing decision cost (token-aware profile)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()} (shared machine)",
        "- command: `python benchmarks/routing/decision_cost.py "
        f"--requests {args.requests} --replicas {args.replicas}`",
        f"- {args.replicas} replicas with scraped signals, block size 16; chat prompts of "
        f"{result['prompt_tokens']:.0f} tokens ({'SmolLM2 tokenizer' if result['tokenizer'] else 'no tokenizer'}); "
        "16 shared documents + a new question per request",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| decision, document seen before: p50 | {result['warm_p50_ms']:.3f} ms |",
        f"| decision, document seen before: p99 | {result['warm_p99_ms']:.3f} ms |",
        f"| decision, document seen before: mean | {result['warm_mean_ms']:.3f} ms |",
        f"| first sight of a document (cold tokenization), median of {result['cold_count']:.0f} | "
        f"{result['cold_median_ms']:.2f} ms |",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
