"""Routing decision cost, cold and warm: one `Scheduler.assign` of the token-aware profile over 64 replicas, for a RAG
mix where half the requests bring a document never seen before, with the prefix index full and the event loop busy.

    python -m benchmarks.routing.decision_cost --requests 2000 --replicas 64     # `make bench-decision`

- the mix: each request is a long document (4000 words, ~28k characters) + a new question; with probability
  --new-fraction the document is new (cold: hashed for the first time and a miss in the prefix index), else one of
  16 hot documents (warm: a hit);
- the prefix index at capacity: before measuring, enough distinct documents are routed that every replica's index
  holds as many blocks as its KV cache (--kv-blocks, the bound the gateway applies), so lookups and evictions run
  on a full index;
- a busy loop: --concurrency decisions run at once on the event loop beside a task that burns CPU in 100 us slices
  (the relays of other requests), so time spent waiting for the loop shows.

Reported per request, cold and warm separately: **event-loop blocking** (the longest stretch the decision held the
loop without yielding, and the total on the loop: each step of the coroutine is timed as the loop runs it), any
time spent waiting off the loop (routing no longer tokenizes, so none is expected: it is kept as its own line), and
the decision's end-to-end latency on the busy loop.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.ledger import LoadLedger
from gateway.routing import RouteContext, Scheduler, load_profiles
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.openai import ChatCompletionRequest
from llmserve.protocol.vllm_metrics import Scraped

REPO = Path(__file__).resolve().parents[2]
TEXT = (
    "the model serves tokens quickly while the cache keeps prefixes warm for every replica in the pool documents "
    "questions answers routing latency throughput gateway scheduler block hash index"
)
WORDS = TEXT.split()
T = TypeVar("T")


@dataclass
class Timing:
    blocking_max_s: float = 0.0  # the longest synchronous stretch on the loop
    on_loop_s: float = 0.0  # all stretches together
    off_loop_s: float = 0.0  # awaiting futures (the tokenizer's worker thread)
    wall_s: float = 0.0


@dataclass
class Samples:
    cold: list[Timing] = field(default_factory=list)
    warm: list[Timing] = field(default_factory=list)


async def timed(coro: Coroutine[Any, Any, T]) -> tuple[T, Timing]:
    """Run `coro`, timing each step the loop gives it (a step ends where it awaits a future)."""
    timing = Timing()
    started = time.perf_counter()
    value: Any = None
    error: BaseException | None = None
    while True:
        step = time.perf_counter()
        try:
            future = coro.throw(error) if error is not None else coro.send(value)
        except StopIteration as stop:
            elapsed = time.perf_counter() - step
            timing.blocking_max_s = max(timing.blocking_max_s, elapsed)
            timing.on_loop_s += elapsed
            timing.wall_s = time.perf_counter() - started
            return stop.value, timing
        elapsed = time.perf_counter() - step
        timing.blocking_max_s = max(timing.blocking_max_s, elapsed)
        timing.on_loop_s += elapsed
        waited = time.perf_counter()
        try:
            value, error = await future, None
        except BaseException as exc:  # handed back to the coroutine, as a Task would
            value, error = None, exc
        timing.off_loop_s += time.perf_counter() - waited


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def busy_loop(stop: asyncio.Event, slice_s: float = 100e-6, period_s: float = 500e-6) -> None:
    """Other requests' work on the same loop: burn `slice_s` of CPU every `period_s`."""
    while not stop.is_set():
        end = time.perf_counter() + slice_s
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(period_s)


def document(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    service = ServiceInfo(name="svc", model_name="m", created=0)
    endpoints = [Endpoint("svc", f"r{i}", f"http://10.0.0.{i}:8000") for i in range(args.replicas)]
    board = LoadLedger()
    now = time.monotonic()
    for i, endpoint in enumerate(endpoints):
        scraped = Scraped(running=i % 5, waiting=i % 3, kv_usage=(i % 10) / 10, block_size=16,
                          num_blocks=args.kv_blocks)  # fmt: skip
        board.record_scrape(endpoint, scraped, now)
    scheduler = Scheduler(load_profiles(seed=args.seed), board, default_profile="token-aware")

    def request(doc: str, i: int) -> RouteContext:
        body = {"model": "m", "max_tokens": 64, "messages": [
            {"role": "system", "content": doc},
            {"role": "user", "content": f"Question {i}: what does part {rng.randrange(100)} say?"},
        ]}  # fmt: skip
        return RouteContext(service=service, route="chat_completions",
                            request=ChatCompletionRequest.model_validate(body), body_size=len(doc) + 100)  # fmt: skip

    # Fill the prefix index: every replica ends up holding as many blocks as its KV cache.
    filled_tokens = 0
    filler = 0
    target_blocks = args.replicas * args.kv_blocks
    while filled_tokens // 16 < 1.3 * target_blocks:
        ctx = request(document(rng, args.doc_words), -filler)
        assignment = await scheduler.assign(ctx, endpoints)
        assignment.release()
        filled_tokens += ctx.prompt_tokens
        filler += 1
    hot = [document(rng, args.doc_words) for _ in range(16)]
    for i, doc in enumerate(hot):  # first sights of the hot documents are not measured
        (await scheduler.assign(request(doc, i), endpoints)).release()

    samples = Samples()
    stop = asyncio.Event()
    noise = asyncio.get_running_loop().create_task(busy_loop(stop))
    prompt_tokens: list[int] = []
    queue = list(range(args.requests))

    async def client() -> None:
        while queue:
            i = queue.pop()
            cold = rng.random() < args.new_fraction
            ctx = request(document(rng, args.doc_words) if cold else rng.choice(hot), i)
            assignment, timing = await timed(scheduler.assign(ctx, endpoints))
            assignment.release()
            (samples.cold if cold else samples.warm).append(timing)
            prompt_tokens.append(ctx.prompt_tokens)

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    stop.set()
    await noise
    return {"samples": samples, "prompt_tokens": statistics.median(prompt_tokens), "fillers": filler}


def summarise(timings: list[Timing]) -> dict[str, float]:
    def ms(key: str, q: float) -> float:
        return percentile([getattr(t, key) for t in timings], q) * 1000

    return {
        "count": len(timings),
        "blocking_p50_ms": ms("blocking_max_s", 0.5), "blocking_p99_ms": ms("blocking_max_s", 0.99),
        "on_loop_p50_ms": ms("on_loop_s", 0.5), "on_loop_p99_ms": ms("on_loop_s", 0.99),
        "off_loop_p50_ms": ms("off_loop_s", 0.5), "off_loop_p99_ms": ms("off_loop_s", 0.99),
        "wall_p50_ms": ms("wall_s", 0.5), "wall_p99_ms": ms("wall_s", 0.99),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--kv-blocks", type=int, default=4096, help="each replica's KV blocks (the index bound)")
    parser.add_argument("--doc-words", type=int, default=4000, help="words per document (~7 characters each)")
    parser.add_argument("--new-fraction", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "routing_decision_cost_cold_warm.md"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = asyncio.run(run(args))
    cold, warm = summarise(result["samples"].cold), summarise(result["samples"].warm)
    lines = [
        "# Routing decision cost, cold and warm (token-aware, full prefix index, busy event loop)",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')} UTC",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average "
        f"before {[round(x, 2) for x in load_before]}, after {[round(x, 2) for x in os.getloadavg()]}",
        f"- command: `python -m benchmarks.routing.decision_cost --requests {args.requests} --replicas "
        f"{args.replicas} --kv-blocks {args.kv_blocks} --doc-words {args.doc_words} --new-fraction "
        f"{args.new_fraction:g} --concurrency {args.concurrency} --seed {args.seed}` (`make bench-decision`)",
        f"- {args.replicas} replicas, block size 16, prefix index filled to {args.kv_blocks} blocks per replica "
        f"({result['fillers']} distinct documents routed first); prompts of ~{result['prompt_tokens']:.0f} tokens "
        "(estimated by routing at 4 characters a token: it hashes text and does not tokenize); "
        f"{args.new_fraction:.0%} of the requests bring a new document; {args.concurrency} decisions at once beside a "
        "task burning 100 us of CPU every 0.5 ms",
        "",
        "| request | count | loop blocking p50 / p99 ms | on the loop p50 / p99 ms | waiting off the loop "
        "p50 / p99 ms | decision latency p50 / p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in (("warm (document seen before)", warm), ("cold (new document)", cold)):
        lines.append(
            f"| {name} | {row['count']:.0f} | {row['blocking_p50_ms']:.3f} / {row['blocking_p99_ms']:.3f} | "
            f"{row['on_loop_p50_ms']:.3f} / {row['on_loop_p99_ms']:.3f} | {row['off_loop_p50_ms']:.2f} / "
            f"{row['off_loop_p99_ms']:.2f} | {row['wall_p50_ms']:.2f} / {row['wall_p99_ms']:.2f} |"
        )
    lines += [
        "",
        "Loop blocking: the longest stretch one decision held the event loop (what every other request on it waits "
        "behind); on the loop: all its stretches together; waiting off the loop: time it awaited other work (a "
        "thread; none now that routing does not tokenize); decision latency: from call to assignment "
        "on the busy loop.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"warm": warm, "cold": cold}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
