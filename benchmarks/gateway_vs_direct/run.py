"""Tokens/s and TTFT of 16 concurrent streams on the real vLLM-CPU worker: directly, and through the gateway.

Starts `llmserve up` with configs/quickstart.yaml (or uses --gateway URL), finds the worker from the admin API,
then runs interleaved rounds (direct, gateway, gateway, direct, ...) of N concurrent streamed chat requests with
the same prompts, `max_tokens` fixed and `ignore_eos` so every stream has the same length. Reports medians.

    python benchmarks/gateway_vs_direct/run.py --rounds 6 --streams 16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
TOPICS = ["the sea", "a robot", "Paris", "a garden", "winter", "a violin", "the moon", "a library", "trains",
          "a lighthouse", "bees", "a desert", "rain", "a market", "a clock", "mountains"]  # fmt: skip


async def one_stream(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    ttft = float("nan")
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                if tokens == 0:
                    ttft = time.perf_counter() - started
                tokens += 1
    return ttft, tokens


async def single_ttfts(worker: str, gateway: str, pairs: int) -> dict[str, list[float]]:
    """One stream at a time, alternating direct and gateway: the per-request TTFT the gateway adds, without
    the queueing noise of concurrent streams."""
    out: dict[str, list[float]] = {"direct": [], "gateway": []}
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(pairs):
            order = [("direct", worker), ("gateway", gateway)]
            for name, url in order if i % 2 == 0 else order[::-1]:
                ttft, _ = await one_stream(client, url, f"Say something about {TOPICS[i % len(TOPICS)]}.", 4)
                out[name].append(ttft)
    return out


async def one_round(url: str, streams: int, max_tokens: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *[one_stream(client, url, f"Write a story about {TOPICS[i % len(TOPICS)]}.", max_tokens)
              for i in range(streams)]
        )  # fmt: skip
        wall = time.perf_counter() - started
    tokens = sum(t for _, t in results)
    return {"tokens_per_s": tokens / wall, "ttft_median": statistics.median(t for t, _ in results), "tokens": tokens}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_llmserve() -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = REPO / "benchmarks" / ".work" / "gateway_vs_direct.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llmserve", "up", "-f", "configs/quickstart.yaml", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llmserve up exited; see {log}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("llmserve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--single-pairs", type=int, default=40, help="alternating single-stream TTFT pairs")
    parser.add_argument("--gateway", default=None, help="a running llmserve (default: start one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gateway_vs_direct.md")
    args = parser.parse_args()
    process = None
    gateway = args.gateway
    if gateway is None:
        gateway, process = start_llmserve()
    try:
        services = httpx.get(f"{gateway}/admin/v1/services", timeout=10).json()["services"]
        worker = services[0]["replicas"][0]["url"]
        asyncio.run(one_round(worker, 4, 8))  # warm-up
        results: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
        for i in range(args.rounds):
            order = ["direct", "gateway"] if i % 2 == 0 else ["gateway", "direct"]
            for name in order:
                result = asyncio.run(one_round(worker if name == "direct" else gateway, args.streams, args.max_tokens))
                results[name].append(result)
                print(
                    f"[bench] round {i + 1} {name:<8} {result['tokens_per_s']:6.1f} tok/s "
                    f"TTFT median {result['ttft_median'] * 1000:7.1f} ms ({result['tokens']:.0f} tokens)",
                    flush=True,
                )
        single = asyncio.run(single_ttfts(worker, gateway, args.single_pairs))
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(60)
    report(args, results, single)


def report(
    args: argparse.Namespace, results: dict[str, list[dict[str, float]]], single: dict[str, list[float]]
) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ratio = med("gateway", "tokens_per_s") / med("direct", "tokens_per_s")
    added = statistics.median(
        g["ttft_median"] - d["ttft_median"] for g, d in zip(results["gateway"], results["direct"], strict=True)
    )
    paired = statistics.median(g - d for g, d in zip(single["gateway"], single["direct"], strict=True))
    lines = [
        "# Through the gateway vs directly against the vLLM-CPU worker",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "vLLM-CPU 0.32.0, SmolLM2-135M-Instruct float32, one replica (configs/quickstart.yaml)",
        f"- command: `python benchmarks/gateway_vs_direct/run.py --rounds {args.rounds} --streams {args.streams} "
        f"--max-tokens {args.max_tokens}`",
        f"- {args.streams} concurrent streamed chat requests per round, {args.max_tokens} tokens each (ignore_eos), "
        f"same prompts; {args.rounds} rounds per target, interleaved; medians over rounds",
        "",
        "| target | output tokens/s | TTFT (median of a round) ms |",
        "| --- | ---: | ---: |",
        f"| direct | {med('direct', 'tokens_per_s'):.1f} | {med('direct', 'ttft_median') * 1000:.1f} |",
        f"| through the gateway | {med('gateway', 'tokens_per_s'):.1f} | {med('gateway', 'ttft_median') * 1000:.1f} |",
        "",
        f"Gateway / direct tokens/s: **{ratio:.3f}**; TTFT added at {args.streams} streams (median of per-round "
        f"differences): {added * 1000:+.1f} ms. At {args.streams} concurrent streams TTFT is mostly queueing in the "
        "engine (prefills of all streams share CPU steps), so round-to-round noise is large; the paired "
        "single-stream measurement below isolates what the gateway adds.",
        "",
        f"Single stream, {args.single_pairs} alternating pairs (4 tokens each):",
        "",
        "| target | TTFT median ms | TTFT p90 ms |",
        "| --- | ---: | ---: |",
        *[
            f"| {name} | {statistics.median(single[name]) * 1000:.1f} | "
            f"{statistics.quantiles(single[name], n=10)[-1] * 1000:.1f} |"
            for name in ("direct", "gateway")
        ],
        "",
        f"TTFT added per request (median of paired differences): **{paired * 1000:+.2f} ms**.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
