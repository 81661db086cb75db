"""Routing policies side by side on 8 simulated vLLM workers: round-robin, least-request, production-stack's
prefix policy (128-character chunks, random among the longest matches) and llmserve's token-aware profile.

For every workload (rag, chat, chat-shared, random) and policy: fresh simulated workers (empty caches), a gateway
with that policy, the same seeded trace replayed; TTFT measured at the client (first content token), output
tokens/s over the run, prefix-cache hit rate from the workers' own vllm:prefix_cache_* counters.

    python benchmarks/routing/run.py --duration 60 --seed 7

Workers: `python -m llmserve.workers.sim --profile h100-llama-8b` (constants from published vLLM numbers, see
llmserve/workers/sim/profiles.py) with a KV cache of --kv-blocks blocks each, so that the RAG corpus does not fit
in one worker's cache (as in a real deployment whose document set outgrows a GPU).
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.routing.workloads import Session, Turn, Workload, chat, rag, random_prompts
from llmserve.protocol.vllm_metrics import parse_vllm_metrics
from llmserve.storage import ModelCache

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "benchmarks" / ".work"
POLICIES = ("round-robin", "least-request", "prefix-chars", "token-aware")


@dataclass
class Result:
    ttfts: list[float] = field(default_factory=list)
    output_tokens: int = 0
    errors: int = 0
    wall_s: float = 0.0
    hit_rate: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tokenizer_dir() -> str | None:
    for entry in ModelCache().root.glob("SmolLM2-135M-Instruct*"):
        if (entry / "tokenizer.json").is_file():
            return str(entry)
    return None


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready")


class Cluster:
    def __init__(self, args: argparse.Namespace, policy: str, kv_blocks: int) -> None:
        self.args = args
        self.policy = policy
        self.kv_blocks = kv_blocks
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[str] = []
        self.gateway = ""

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        WORK.mkdir(parents=True, exist_ok=True)
        with open(WORK / f"routing-{name}.log", "wb") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.processes.append(process)
        return process

    def __enter__(self) -> Cluster:
        tokenizer = tokenizer_dir()
        for i in range(self.args.workers):
            port = free_port()
            cmd = [
                sys.executable, "-m", "llmserve.workers.sim", "--port", str(port), "--model", "m",
                "--profile", "h100-llama-8b", "--num-blocks", str(self.kv_blocks), "--speed", str(self.args.speed),
            ]  # fmt: skip
            if tokenizer:
                cmd += ["--tokenizer", tokenizer]
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, self._start(cmd, f"worker{i}"))
            self.workers.append(url)
        port = free_port()
        cmd = [
            sys.executable, str(REPO / "benchmarks" / "gateway_overhead" / "serve_gateway.py"), "--port", str(port),
            "--model", "m", "--routing-profile", self.policy, *[a for w in self.workers for a in ("--worker", w)],
        ]  # fmt: skip
        if tokenizer:
            cmd += ["--tokenizer-dir", tokenizer]
        self.gateway = f"http://127.0.0.1:{port}"
        wait_ready(self.gateway, self._start(cmd, "gateway"))
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.wait(10)

    def prefix_counters(self) -> tuple[float, float]:
        hits = queries = 0.0
        for url in self.workers:
            scraped = parse_vllm_metrics(httpx.get(f"{url}/metrics", timeout=5).text)
            hits += scraped.prefix_hits
            queries += scraped.prefix_queries
        return hits, queries


async def send(client: httpx.AsyncClient, gateway: str, turn: Turn, result: Result) -> str:
    body = {"model": "m", "messages": turn.messages, "max_tokens": turn.max_tokens, "stream": True, "ignore_eos": True}
    headers = {"x-session-id": turn.session} if turn.session else {}
    started = time.perf_counter()
    first = None
    answer: list[str] = []
    try:
        async with client.stream("POST", f"{gateway}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                result.errors += 1
                return ""
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                    first = first or time.perf_counter()
                    result.output_tokens += 1
                    answer.append(line.split('"content":"', 1)[1].split('"', 1)[0])
    except httpx.HTTPError:
        result.errors += 1
        return ""
    if first is not None:
        result.ttfts.append(first - started)
    return "".join(answer)


async def run_session(
    client: httpx.AsyncClient, gateway: str, session: Session, t0: float, result: Result, speed: float
) -> None:
    await asyncio.sleep(max(0.0, t0 + session.start / speed - time.perf_counter()))
    history = [{"role": "system", "content": session.system}]
    for question in session.questions:
        history.append({"role": "user", "content": question})
        answer = await send(client, gateway, Turn(0, list(history), session.max_tokens, session.name), result)
        history.append({"role": "assistant", "content": answer})
        await asyncio.sleep(session.think_s / speed)


async def replay(gateway: str, workload: Workload, speed: float) -> Result:
    """Replay `workload` (times in simulated seconds) against a cluster running at `speed`."""
    result = Result()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()

        async def at(turn: Turn) -> None:
            await asyncio.sleep(max(0.0, t0 + turn.at / speed - time.perf_counter()))
            await send(client, gateway, turn, result)

        await asyncio.gather(
            *(at(t) for t in workload.turns),
            *(run_session(client, gateway, s, t0, result, speed) for s in workload.sessions),
        )
        result.wall_s = (time.perf_counter() - t0) * speed  # in simulated seconds
    return result


def workloads(args: argparse.Namespace) -> list[Workload]:
    chosen = []
    for name in args.workloads.split(","):
        if name == "rag":
            chosen.append(rag(args.seed, duration_s=args.duration, rate=args.rag_rate, documents=args.rag_docs))
        elif name in ("chat", "chat-shared"):
            chosen.append(
                chat(
                    args.seed,
                    duration_s=args.duration,
                    sessions=args.chat_sessions,
                    system_words=args.chat_system_words,
                    system_prompts=args.chat_system_prompts if name == "chat-shared" else None,
                )
            )
        elif name == "random":
            chosen.append(random_prompts(args.seed, duration_s=args.duration, rate=args.random_rate))
        else:
            raise SystemExit(f"unknown workload {name}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of arrivals per run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--kv-blocks", type=int, default=2500, help="KV blocks (16 tokens) per simulated worker")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--rag-rate", type=float, default=30.0, help="RAG requests per second")
    parser.add_argument("--rag-docs", type=int, default=32, help="documents in the RAG corpus (~3k tokens each)")
    parser.add_argument("--random-rate", type=float, default=30.0, help="random-prompt requests per second")
    parser.add_argument("--chat-sessions", type=int, default=64)
    parser.add_argument(
        "--chat-kv-blocks", type=int, default=None, help="KV blocks per worker for chat (default: --kv-blocks)"
    )
    parser.add_argument("--chat-system-words", type=int, default=300, help="each session's own system prompt")
    parser.add_argument(
        "--chat-system-prompts", type=int, default=4, help="chat-shared: system prompts the sessions share"
    )
    parser.add_argument("--workloads", default="rag,chat,chat-shared,random")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routing.md")
    args = parser.parse_args()
    rows: list[tuple[str, str, Result]] = []
    for workload in workloads(args):
        for policy in args.policies.split(","):
            is_chat = workload.name.startswith("chat")
            kv_blocks = args.chat_kv_blocks if is_chat and args.chat_kv_blocks else args.kv_blocks
            with Cluster(args, policy, kv_blocks) as cluster:
                before = cluster.prefix_counters()
                result = asyncio.run(replay(cluster.gateway, workload, args.speed))
                after = cluster.prefix_counters()
            queries = after[1] - before[1]
            result.hit_rate = (after[0] - before[0]) / queries if queries else 0.0
            rows.append((workload.name, policy, result))
            print(f"[bench] {workload.name:<7} {policy:<14} {summary(result, args.speed)}", flush=True)
    report(args, rows)


def summary(result: Result, speed: float) -> str:
    if not result.ttfts:
        return f"no successful requests ({result.errors} errors)"
    t = sorted(x * speed * 1000 for x in result.ttfts)
    return (
        f"TTFT mean {statistics.fmean(t):7.1f} p50 {t[len(t) // 2]:7.1f} p99 {t[int(len(t) * 0.99)]:8.1f} ms  "
        f"{result.output_tokens / result.wall_s:7.0f} tok/s  hit {result.hit_rate:5.1%}  "
        f"n={len(t)} errors={result.errors}"
    )


def report(args: argparse.Namespace, rows: list[tuple[str, str, Result]]) -> None:
    lines = [
        "# Routing policies on 8 simulated vLLM workers",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- command: `python benchmarks/routing/run.py --duration {args.duration:g} --seed {args.seed} "
        f"--workers {args.workers} --kv-blocks {args.kv_blocks} --speed {args.speed:g} --rag-rate {args.rag_rate:g} "
        f"--rag-docs {args.rag_docs} --random-rate {args.random_rate:g} --chat-sessions {args.chat_sessions} "
        f"--chat-system-words {args.chat_system_words} --chat-system-prompts {args.chat_system_prompts} "
        f"--workloads {args.workloads} --policies {args.policies}"
        + (f" --chat-kv-blocks {args.chat_kv_blocks}" if args.chat_kv_blocks else "")
        + "`",
        f"- workers: llmserve.workers.sim, profile h100-llama-8b, {args.kv_blocks} KV blocks of 16 tokens each "
        f"({args.chat_kv_blocks or args.kv_blocks} for chat); "
        "fresh workers for every run; one gateway per policy; the same seeded trace for every policy",
        "- TTFT at the client (first content token) and tokens/s, in simulated time (wall time x speed: the workers "
        "run slower than real time so that 8 Python simulators, the gateway and the load generator fit on 2 cores); "
        "hit rate = prefix-cache hits / queries summed over the workers",
        "",
        "| workload | policy | TTFT mean ms | p50 ms | p99 ms | output tok/s | prefix hit rate | requests | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload, policy, result in rows:
        t = sorted(x * args.speed * 1000 for x in result.ttfts) or [float("nan")]
        p50, p99 = t[len(t) // 2], t[int(len(t) * 0.99)]
        lines.append(
            f"| {workload} | {policy} | {statistics.fmean(t):.1f} | {p50:.1f} | {p99:.1f} | "
            f"{result.output_tokens / max(result.wall_s, 1e-9):.0f} | {result.hit_rate:.1%} | {len(result.ttfts)} | "
            f"{result.errors} |"
        )
    lines += ["", "Ratios of mean TTFT (lower is better for llmserve):", ""]
    by = {(w, p): r for w, p, r in rows}
    for workload in dict.fromkeys(w for w, _, _ in rows):
        ours = by.get((workload, "token-aware"))
        if ours is None or not ours.ttfts:
            continue
        mean = statistics.fmean(ours.ttfts)
        parts = [
            f"{policy} / token-aware = {statistics.fmean(by[(workload, policy)].ttfts) / mean:.2f}x"
            for policy in POLICIES
            if policy != "token-aware" and (workload, policy) in by and by[(workload, policy)].ttfts
        ]
        lines.append(f"- {workload}: " + "; ".join(parts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
