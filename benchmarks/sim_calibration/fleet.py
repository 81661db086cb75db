"""How cheap is the simulator? N simulated workers plus a load generator on this machine.

    .venv/bin/python benchmarks/sim_calibration/fleet.py --workers 8 --streams 16 --seconds 20

Starts N `python -m llmserve.workers.sim` processes, keeps `--streams` streamed completions open against each
(prompts of a few tokens, so steps are nearly all decode; `--max-tokens` tokens, `ignore_eos`), and reports the
tokens streamed, the CPU the simulators and the load generator used, and the median inter-token latency seen by
clients next to the step time the profile predicts for that batch size (does the host keep up with simulated time?).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llmserve.workers.sim.profiles import get_profile  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_workers(args: argparse.Namespace) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    ports = [free_port() for _ in range(args.workers)]
    argv = [sys.executable, "-m", "llmserve.workers.sim", "--model", "m", "--profile", args.profile]
    argv += ["--speed", str(args.speed)]
    procs = [
        subprocess.Popen([*argv, "--port", str(port)], cwd=REPO, stderr=subprocess.DEVNULL, start_new_session=True)
        for port in ports
    ]
    return ports, procs


async def run(args: argparse.Namespace, ports: list[int], procs: list[subprocess.Popen[bytes]]) -> dict[str, object]:
    began = time.monotonic()
    itls: list[float] = []
    errors: list[str] = []
    tokens = 0
    try:
        limits = httpx.Limits(max_connections=args.workers * args.streams + 8)
        for port in ports:
            while True:
                try:
                    async with httpx.AsyncClient() as probe:
                        if (await probe.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                            break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        all_ready = time.monotonic() - began
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            sim_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            until = start + args.seconds
            counter = itertools.count()

            async def stream(port: int) -> None:
                nonlocal tokens
                while time.perf_counter() < until:
                    body = {"model": "m", "prompt": f"request {next(counter)}",
                            "max_tokens": args.max_tokens, "ignore_eos": True, "stream": True}  # fmt: skip
                    last = None
                    try:
                        async with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body) as r:
                            async for line in r.aiter_lines():
                                if line.startswith("data: {"):
                                    now = time.perf_counter()
                                    if last is not None:
                                        itls.append(now - last)
                                    last = now
                                    tokens += 1
                    except httpx.TransportError as exc:
                        errors.append(f"{type(exc).__name__} {exc} after {time.perf_counter() - start:.1f} s")

            await asyncio.gather(*(stream(port) for port in ports for _ in range(args.streams)))
            elapsed = time.perf_counter() - start
            sim_cpu = sum(cpu_seconds(p.pid) for p in procs) - sim_cpu0
            self_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = self_cpu1.ru_utime + self_cpu1.ru_stime - self_cpu0.ru_utime - self_cpu0.ru_stime
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGINT)
    profile = get_profile(args.profile)
    context = args.streams * (4 + args.max_tokens / 2) / 1000  # ~4 prompt tokens, half the output on average
    predicted = profile.step_ms(args.streams, 0, 0, context) / 1000 / args.speed
    return {
        "workers": args.workers,
        "streams_per_worker": args.streams,
        "profile": args.profile,
        "speed": args.speed,
        "all_ready_s": round(all_ready, 2),
        "tokens_per_s": round(tokens / elapsed),
        "sim_cpu_cores": round(sim_cpu / elapsed, 3),
        "sim_cpu_us_per_token": round(sim_cpu / tokens * 1e6, 1),
        "client_cpu_cores": round(client_cpu / elapsed, 3),
        "median_itl_ms": round(statistics.median(itls) * 1000, 1),
        "transport_errors": len(errors),
        "first_errors": errors[:3],
        "predicted_decode_step_ms": round(predicted * 1000, 1),
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per worker")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--profile", default="cpu-smollm2")
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()
    ports, procs = start_workers(args)
    try:
        print(json.dumps(asyncio.run(run(args, ports, procs))))
    finally:
        for proc in procs:
            proc.wait(10)


if __name__ == "__main__":
    main()
