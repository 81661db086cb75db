"""Streams through a proxy to the fake backend's spaced chunks: how late each chunk arrives, and CPU per stream.

    python benchmarks/gateway_overhead/stream_probe.py URL --streams 200 --concurrency 16

Each chunk carries the backend's CLOCK_MONOTONIC at its write (`x_sent_ns`, fake_backend.py --chunk-gap-ms); the
probe (same machine, same clock) records arrival - sent for every chunk. Direct to the backend this is the
loopback + client cost; through a proxy the difference is what the proxy adds per chunk. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

BODY = {"model": "m", "messages": [{"role": "user", "content": "Stream me some tokens."}], "stream": True}


async def one(session: aiohttp.ClientSession, url: str, delays: list[float]) -> bool:
    async with session.post(f"{url}/v1/chat/completions", json=BODY) as response:
        if response.status != 200:
            return False
        buffer = b""
        async for data in response.content.iter_any():
            now = time.monotonic_ns()
            buffer += data
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                marker = frame.find(b'"x_sent_ns":')
                if marker >= 0:
                    sent = int(frame[marker + 12 :].split(b"}", 1)[0].split(b",", 1)[0])
                    delays.append((now - sent) / 1e6)
        return True


async def run(url: str, streams: int, concurrency: int) -> dict[str, float]:
    delays: list[float] = []
    ok = 0
    queue = iter(range(streams))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal ok
            for _ in queue:
                done = await one(session, url, delays)  # (not `ok += await ...`: ok would be read before the await)
                ok += done

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    delays.sort()
    return {
        "streams": ok,
        "errors": streams - ok,
        "elapsed_s": elapsed,
        "streams_per_s": ok / elapsed,
        "chunks": len(delays),
        "chunk_delay_p50_ms": statistics.median(delays) if delays else float("nan"),
        "chunk_delay_p99_ms": delays[int(0.99 * len(delays))] if delays else float("nan"),
        "chunk_delay_mean_ms": statistics.fmean(delays) if delays else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print("JSON " + json.dumps(asyncio.run(run(args.url, args.streams, args.concurrency))), flush=True)


if __name__ == "__main__":
    main()
