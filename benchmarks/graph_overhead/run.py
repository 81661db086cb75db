"""What a graph costs per hop: a 3-step Sequence through the real llmserve gateway vs the client calling the three
services itself, and vs KServe's own router (cmd/router, Go) when it could be built (build_kserve_router.sh).

Three fast fake services (benchmarks/gateway_overhead/fake_backend.py, one process each) answer every chat
request with a fixed ~400-byte completion. The gateway (serve_graph.py: build_gateway, as `llmserve gateway` runs
it, over a fixed registry of three services s1..s3, one replica each) serves the graph `root: Sequence [s1, s2,
s3]` of serviceName steps, each sent the request (`$request`: a chat completion is not a chat request), so each
step goes through the gateway's dispatch path (scheduler, ledger, upstream pool). Targets, per request:

- direct (3 calls): the client calls the three services in order with one keep-alive client;
- gateway (3 calls): the client calls the three services through the gateway's /v1/chat/completions;
- graph (1 call): the client calls POST /v1/graphs/bench once; the gateway makes the three calls;
- kserve router: its router over serviceUrl steps, when built.

Reported per target and concurrency: p50 / p99 latency of the whole request, added p50 vs direct (and per hop:
added / 3), and the gateway's (router's) CPU time per request (psutil). Rounds are interleaved (each target runs
each concurrency once per round); medians over rounds are reported with their spread (min..max of the round
p50s).

    python benchmarks/graph_overhead/run.py --rounds 5 --requests 2000 --concurrency 1,8
    python benchmarks/graph_overhead/run.py --smoke        # a few requests, to check the harness

The result goes to benchmarks/results/graph_overhead.md with this command, the machine, the date and the load.
KServe's router listens on :8080 (hard-coded); it is skipped when that port is taken.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KSERVE_ROUTER = REPO / "benchmarks" / ".work" / "kserve-router" / "router"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
BODY = orjson.dumps({"model": "m", "messages": MESSAGES})
STEPS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def start(cmd: list[str], health: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {process.returncode}")
        try:
            httpx.get(health, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{health} did not come up")


def graph_spec(names: list[str]) -> dict[str, object]:
    steps = [{"name": name, "serviceName": name} for name in names]
    return {"nodes": {"root": {"routerType": "Sequence", "steps": steps}}}


def kserve_spec(urls: list[str]) -> dict[str, object]:
    steps = [{"name": f"s{i + 1}", "serviceUrl": f"{u}/v1/chat/completions"} for i, u in enumerate(urls)]
    return {"nodes": {"root": {"routerType": "Sequence", "steps": steps}}}


@dataclass
class Target:
    name: str
    calls: list[tuple[str, bytes]]  # (url, body) called in order per request (one for a router)
    process: psutil.Process | None = None
    rounds: dict[int, list[dict[str, float]]] = field(default_factory=dict)


def measure(target: Target, concurrency: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_worker = max(1, requests // concurrency)

    def work() -> None:
        nonlocal errors
        with httpx.Client(timeout=30) as client:
            for _ in range(per_worker):
                started = time.perf_counter()
                ok = True
                for url, body in target.calls:
                    answer = client.post(url, content=body, headers={"content-type": "application/json"})
                    ok = ok and answer.status_code == 200
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += not ok

    cpu_before = _cpu(target.process)
    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    done = len(latencies)
    latencies.sort()
    cpu = _cpu(target.process) - cpu_before
    return {
        "p50_ms": latencies[done // 2] * 1e3,
        "p99_ms": latencies[min(done - 1, int(done * 0.99))] * 1e3,
        "req_s": done / wall,
        "cpu_us": cpu / done * 1e6 if target.process is not None else float("nan"),
        "errors": errors,
    }


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per target, concurrency and round")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--smoke", action="store_true", help="1 round of 50 requests; results not written")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "graph_overhead.md")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.requests = 1, 50
    levels = [int(c) for c in args.concurrency.split(",")]
    backend = str(REPO / "benchmarks" / "gateway_overhead" / "fake_backend.py")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for _ in range(STEPS):
            port = free_port()
            processes.append(start([sys.executable, backend, "--port", str(port)], f"http://127.0.0.1:{port}/health"))
            urls.append(f"http://127.0.0.1:{port}")
        names = [f"s{i + 1}" for i in range(STEPS)]
        targets = [Target("direct (3 calls)", [(f"{u}/v1/chat/completions", BODY) for u in urls])]

        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, str(HERE / "serve_graph.py"), "--port", str(port)]
        cmd += [f"--service={name}={url}" for name, url in zip(names, urls, strict=True)]
        cmd += ["--graph-json", orjson.dumps(graph_spec(names)).decode()]
        ours = start(cmd, f"{gateway}/health", env={"PYTHONPATH": str(REPO)})
        processes.append(ours)
        gateway_process = psutil.Process(ours.pid)
        through = [(f"{gateway}/v1/chat/completions", orjson.dumps({"model": n, "messages": MESSAGES})) for n in names]
        targets.append(Target("gateway (3 calls)", through, gateway_process))
        targets.append(Target("graph (1 call)", [(f"{gateway}/v1/graphs/bench", BODY)], gateway_process))

        notes = []
        if not KSERVE_ROUTER.exists():
            notes.append(f"KServe's router: not built ({KSERVE_ROUTER} missing; see build_kserve_router.sh)")
        elif not port_free(8080):
            notes.append("KServe's router: skipped, port 8080 (its hard-coded port) is in use")
        else:
            spec = orjson.dumps(kserve_spec(urls)).decode()
            kserve = start([str(KSERVE_ROUTER), "--graph-json", spec], "http://127.0.0.1:8080/readyz")
            processes.append(kserve)
            targets.append(Target("kserve router", [("http://127.0.0.1:8080/", BODY)], psutil.Process(kserve.pid)))

        for target in targets:  # warm-up
            measure(target, 1, 20)
        for _ in range(args.rounds):
            for level in levels:
                for target in targets:
                    target.rounds.setdefault(level, []).append(measure(target, level, args.requests))
        report = render(targets, levels, args, notes)
        print(report)
        if not args.smoke:
            args.out.write_text(report)
            print(f"[bench] wrote {args.out}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def render(targets: list[Target], levels: list[int], args: argparse.Namespace, notes: list[str]) -> str:
    command = "python benchmarks/graph_overhead/run.py " + " ".join(sys.argv[1:])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Graph overhead: a 3-step Sequence vs calling the three services directly",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}; load average at the end: {load}; client, gateway and the three fake "
        "services share the cores",
        f"- command: `{command}`",
        f"- {args.rounds} interleaved rounds of {args.requests} requests per target and concurrency; medians over "
        "rounds (spread: min..max of the round p50s)",
        *[f"- {note}" for note in notes],
        "",
        "| target | concurrency | req/s | p50 ms (spread) | p99 ms | added p50 ms | per hop ms | gateway CPU us/req |"
        " errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        base = statistics.median(r["p50_ms"] for r in targets[0].rounds[level])
        for target in targets:
            rounds = target.rounds[level]
            p50s = [r["p50_ms"] for r in rounds]
            p50 = statistics.median(p50s)
            added = "" if target is targets[0] else f"{p50 - base:+.2f}"
            per_step = "" if target is targets[0] else f"{(p50 - base) / STEPS:+.2f}"
            cpu = statistics.median(r["cpu_us"] for r in rounds)
            lines.append(
                f"| {target.name} | {level} | {statistics.median(r['req_s'] for r in rounds):.0f} | {p50:.2f} "
                f"({min(p50s):.2f}..{max(p50s):.2f}) | {statistics.median(r['p99_ms'] for r in rounds):.2f} | {added} "
                f"| {per_step} | {'' if cpu != cpu else f'{cpu:.0f}'} | {sum(int(r['errors']) for r in rounds)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
