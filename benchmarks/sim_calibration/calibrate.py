"""Calibrate the simulator's latency model on a real vLLM worker, then measure the simulator the same way.

    CAL="benchmarks/sim_calibration/calibrate.py"; DATA=benchmarks/sim_calibration/data
    # 1. measure real vLLM-CPU (started here and stopped at the end: ~45 s to start, ~4 min of requests)
    .venv/bin/python $CAL measure --start vllm --out $DATA/vllm-1.json
    # 2. fit the constants from one or more runs (medians); put them in llmserve/workers/sim/profiles.py
    .venv/bin/python $CAL fit $DATA/vllm-1.json $DATA/vllm-2.json
    # 3. measure the simulator (cpu-smollm2 profile, the model's real tokenizer) the same way
    .venv/bin/python $CAL measure --start sim --out $DATA/sim-1.json
    # 4. the comparison table for benchmarks/results/sim_calibration.md
    .venv/bin/python $CAL report --real $DATA/vllm-1.json $DATA/vllm-2.json --sim $DATA/sim-1.json

Every request is a streamed `/v1/completions` call with a prompt of token ids (exact lengths; a random first
token keeps prompts out of each other's prefix cache) and `ignore_eos`, so both servers do the same work.
What is measured, each point repeated and reported as a median:
- prefill: time to first token of one request alone, prompt 16..1500 tokens;
- decode: inter-token latency with 1..32 concurrent streams (32-token prompts, 48 tokens each), and with 4 and 8
  streams of 512-token prompts (reading a longer KV cache every step);
- prefix cache: TTFT of a 1024-token prompt cold, then again (7 of its 8 blocks cached), and a second prompt
  sharing 896 tokens with it;
- a mixed workload: 24 requests of 128/512/1024 prompt tokens and 32 output tokens, 8 at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = Path.home() / ".cache/llmserve/models/SmolLM2-135M-Instruct.Q4_1-e631bcb986ea7af5"
MODEL = "smollm2"
PREFILL_LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 1500)
CONCURRENCY = (1, 2, 4, 8, 16, 32)
DECODE_TOKENS = 48
LONG_CONCURRENCY = (4, 8)
LONG_PROMPT = 512
BLOCK = 128


def vllm_command(port: int) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(MODEL_DIR),
        "--served-model-name",
        MODEL,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--enable-prefix-caching",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-uvicorn-access-log",
    ]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    return argv, env


def sim_command(port: int, extra: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable,
        "-m",
        "llmserve.workers.sim",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        MODEL,
        "--profile",
        "cpu-smollm2",
        "--tokenizer",
        str(MODEL_DIR),
        *extra,
    ]
    return argv, {}


@contextmanager
def started(kind: str, extra: Sequence[str]) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv, env = vllm_command(port) if kind == "vllm" else sim_command(port, extra)
    log = open(f"/tmp/calibrate-{kind}-{port}.log", "wb")  # noqa: SIM115 - closed below
    began = time.monotonic()
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{kind} exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - began > 300:
                raise SystemExit(f"{kind} did not start in 300 s; see {log.name}")
            time.sleep(0.05)
        print(f"{kind} ready on {url} after {time.monotonic() - began:.2f} s", flush=True)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@dataclass
class Timing:
    ttft: float
    itls: list[float]
    total: float
    tokens: int


class Client:
    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64))
        self.rng = random.Random(1234)

    def prompt(self, length: int, prefix: Sequence[int] = ()) -> list[int]:
        body = [self.rng.randrange(1000, 40000) for _ in range(length - len(prefix))]
        return [*prefix, *body]

    async def complete(self, prompt: Sequence[int], max_tokens: int) -> Timing:
        body = {
            "model": MODEL,
            "prompt": list(prompt),
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "temperature": 0,
        }
        start = time.perf_counter()
        stamps: list[float] = []
        async with self.http.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"]:
                        stamps.append(time.perf_counter())
        end = time.perf_counter()
        itls = [b - a for a, b in itertools.pairwise(stamps)]
        return Timing(ttft=stamps[0] - start, itls=itls, total=end - start, tokens=len(stamps))

    async def close(self) -> None:
        await self.http.aclose()


async def measure(url: str, reps: int) -> dict[str, Any]:
    client = Client(url)
    load: list[float] = []

    async def sample_load() -> None:  # how shared the machine was while we measured
        while True:
            load.append(os.getloadavg()[0])
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_load())
    try:
        for _ in range(3):  # warm-up
            await client.complete(client.prompt(32), 4)
        prefill: dict[int, list[float]] = {n: [] for n in PREFILL_LENGTHS}
        for _ in range(reps):
            for n in PREFILL_LENGTHS:
                prefill[n].append((await client.complete(client.prompt(n), 1)).ttft)
        decode: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
        for _ in range(max(2, reps // 2)):
            for c in CONCURRENCY:
                runs = await asyncio.gather(*(client.complete(client.prompt(32), DECODE_TOKENS) for _ in range(c)))
                decode[c].append(statistics.median([x for r in runs for x in r.itls[2:]]))
        decode_long: dict[int, list[float]] = {c: [] for c in LONG_CONCURRENCY}
        for _ in range(2):
            for c in LONG_CONCURRENCY:
                runs = await asyncio.gather(*(client.complete(client.prompt(LONG_PROMPT), 32) for _ in range(c)))
                decode_long[c].append(statistics.median([x for r in runs for x in r.itls[2:]]))
        prefix: dict[str, list[float]] = {"cold": [], "repeat": [], "shared_prefix": []}
        for _ in range(reps):
            first = client.prompt(8 * BLOCK)
            prefix["cold"].append((await client.complete(first, 1)).ttft)
            prefix["repeat"].append((await client.complete(first, 1)).ttft)
            other = client.prompt(8 * BLOCK, prefix=first[: 7 * BLOCK])
            prefix["shared_prefix"].append((await client.complete(other, 1)).ttft)
        workload = await run_workload(client)
    finally:
        sampler.cancel()
        await client.close()
    return {
        "prefill_ttft_s": prefill,
        "decode_itl_s": decode,
        "decode_long_itl_s": decode_long,
        "prefix_ttft_s": prefix,
        "workload": workload,
        "load_average_1m": {"median": statistics.median(load), "max": max(load)},
    }


async def run_workload(client: Client) -> dict[str, float]:
    lengths = [(128, 512, 1024)[i % 3] for i in range(24)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in lengths:
        queue.put_nowait(n)
    timings: list[Timing] = []

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            timings.append(await client.complete(client.prompt(n), 32))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(8)))
    elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "median_ttft_s": statistics.median(t.ttft for t in timings),
        "median_itl_s": statistics.median(x for t in timings for x in t.itls),
        "median_e2e_s": statistics.median(t.total for t in timings),
        "output_tokens_per_s": sum(t.tokens for t in timings) / elapsed,
    }


# ---- fitting -------------------------------------------------------------------------------------------------


def least_squares(xs: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Coefficients b minimising |X b - y| (normal equations; a handful of unknowns)."""
    k = len(xs[0])
    a = [[sum(r[i] * r[j] for r in xs) for j in range(k)] for i in range(k)]
    b = [sum(r[i] * y for r, y in zip(xs, ys, strict=True)) for i in range(k)]
    for col in range(k):  # Gaussian elimination with partial pivoting
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        a[col], a[pivot], b[col], b[pivot] = a[pivot], a[col], b[pivot], b[col]
        for row in range(col + 1, k):
            f = a[row][col] / a[col][col]
            a[row] = [x - f * y for x, y in zip(a[row], a[col], strict=True)]
            b[row] -= f * b[col]
    out = [0.0] * k
    for row in reversed(range(k)):
        out[row] = (b[row] - sum(a[row][j] * out[j] for j in range(row + 1, k))) / a[row][row]
    return out


def medians(series: dict[str, list[float]]) -> dict[int, float]:
    return {int(k): statistics.median(v) for k, v in series.items()}


def merge(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool the samples of several runs (medians are then taken over all of them); workload: per-key median."""
    merged: dict[str, Any] = {}
    for key in ("prefill_ttft_s", "decode_itl_s", "decode_long_itl_s", "prefix_ttft_s"):
        names = dict.fromkeys(k for run in runs for k in run.get(key, {}))
        merged[key] = {k: [x for run in runs for x in run.get(key, {}).get(k, [])] for k in names}
    merged["workload"] = {k: statistics.median(run["workload"][k] for run in runs) for k in runs[0]["workload"]}
    return merged


def fit(data: dict[str, Any]) -> dict[str, float]:
    """Decode, c sequences of `ctx` tokens of context each:
    ITL = max(floor, base + per_seq * c + per_seq_kctx * c * ctx / 1000); the floor and the knee come from the
    short-context sweep, the compute line from the points past the knee and the long-context points together.
    Prefill, one request alone with `cached` prompt tokens already in the cache and P computed:
    TTFT = overhead + base + per_token * P + kctx * P * (cached + P / 2) / 1000, fitted on relative error
    over the prompt-length sweep and the two prefix-cache cases."""
    itl = sorted((c, t * 1000) for c, t in medians(data["decode_itl_s"]).items())
    per_seq, base = _line(itl)
    floor, best, knee = 0.0, _sse(itl, 0.0, base, per_seq), 0
    for k in range(1, len(itl) - 1):
        f = statistics.mean(t for _, t in itl[:k])
        slope, intercept = _line(itl[k:])
        if slope > 0 and (err := _sse(itl, f, intercept, slope)) < best:
            floor, base, per_seq, best, knee = f, intercept, slope, err, k
    short_ctx, long_ctx = 32 + DECODE_TOKENS / 2, LONG_PROMPT + 16
    long = sorted((c, t * 1000) for c, t in medians(data.get("decode_long_itl_s", {})).items())
    per_seq_kctx = 0.0
    if long:
        compute = [(c, short_ctx, t) for c, t in itl[knee:]] + [(c, long_ctx, t) for c, t in long]
        b0, s0, k0 = least_squares([(1.0, c, c * x / 1000) for c, x, _ in compute], [t for _, _, t in compute])
        if k0 > 0 and s0 > 0:
            base, per_seq, per_seq_kctx = b0, s0, k0
    points = [(p, 0, t * 1000) for p, t in medians(data["prefill_ttft_s"]).items()]
    for key in ("repeat", "shared_prefix"):
        points.append((BLOCK, 7 * BLOCK, statistics.median(data["prefix_ttft_s"][key]) * 1000))
    rows = [(1.0 / t, p / t, p * (c + p / 2) / 1000 / t) for p, c, t in points]
    intercept, per_token, kctx = least_squares(rows, [1.0] * len(rows))
    if kctx < 0:  # no measurable growth with context: a line
        intercept, per_token = least_squares([r[:2] for r in rows], [1.0] * len(rows))
        kctx = 0.0
    return {
        "step_floor_ms": round(floor, 1),
        "step_base_ms": round(base, 1),
        "decode_ms_per_seq": round(per_seq, 2),
        "decode_ms_per_seq_kctx": round(per_seq_kctx, 2),
        "prefill_ms_per_token": round(per_token, 3),
        "prefill_ms_per_token_kctx": round(kctx, 3),
        "request_overhead_ms": round(max(0.0, intercept - base), 1),
    }


def _sse(points: Sequence[tuple[float, float]], floor: float, base: float, slope: float) -> float:
    return sum((max(floor, base + slope * c) - t) ** 2 for c, t in points)


def _line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    slope, intercept = statistics.linear_regression([p[0] for p in points], [p[1] for p in points])
    return slope, intercept


# ---- report --------------------------------------------------------------------------------------------------


def report(real: dict[str, Any], sim: dict[str, Any]) -> str:
    def row(label: str, r: float, s: float, scale: float = 1000) -> str:
        return f"| {label} | {r * scale:.0f} | {s * scale:.0f} | {s / r:.2f} |"

    lines = ["| measurement | vLLM-CPU (ms) | simulator (ms) | sim / real |", "| --- | ---: | ---: | ---: |"]
    rp, sp = medians(real["prefill_ttft_s"]), medians(sim["prefill_ttft_s"])
    lines += [row(f"TTFT, prompt {n} tokens, alone", rp[n], sp[n]) for n in sorted(rp) if n in sp]
    rd, sd = medians(real["decode_itl_s"]), medians(sim["decode_itl_s"])
    lines += [row(f"inter-token latency, {c} streams", rd[c], sd[c]) for c in sorted(rd) if c in sd]
    rl, sl = medians(real.get("decode_long_itl_s", {})), medians(sim.get("decode_long_itl_s", {}))
    lines += [
        row(f"inter-token latency, {c} streams, {LONG_PROMPT}-token prompts", rl[c], sl[c])
        for c in sorted(rl)
        if c in sl
    ]
    for key, label in (
        ("cold", "TTFT 1024 tokens, cold"),
        ("repeat", "TTFT same prompt again (896 cached)"),
        ("shared_prefix", "TTFT other prompt, 896-token shared prefix"),
    ):
        lines.append(
            row(label, statistics.median(real["prefix_ttft_s"][key]), statistics.median(sim["prefix_ttft_s"][key]))
        )
    rw, sw = real["workload"], sim["workload"]
    lines.append(row("workload: elapsed", rw["elapsed_s"], sw["elapsed_s"]))
    for key in ("median_ttft_s", "median_itl_s", "median_e2e_s"):
        lines.append(row(f"workload: {key.removesuffix('_s').replace('_', ' ')}", rw[key], sw[key]))
    lines.append(
        f"| workload: output tokens/s | {rw['output_tokens_per_s']:.1f} | {sw['output_tokens_per_s']:.1f} | "
        f"{sw['output_tokens_per_s'] / rw['output_tokens_per_s']:.2f} |"
    )
    return "\n".join(lines)


def predict(profile_name: str) -> str:
    """What a profile's latency model says for the same measurements (no server involved)."""
    sys.path.insert(0, str(REPO))
    from llmserve.workers.sim.profiles import get_profile

    p = get_profile(profile_name)

    def ttft(new: int, cached: int = 0) -> float:
        return p.request_overhead_ms + p.step_ms(0, new, new * (cached + new / 2) / 1000)

    lines = [f"| {profile_name}: predicted | ms |", "| --- | ---: |"]
    lines += [f"| TTFT, prompt {n} tokens, alone | {ttft(n):.1f} |" for n in PREFILL_LENGTHS]
    short, long = 32 + DECODE_TOKENS / 2, LONG_PROMPT + 16
    lines += [f"| inter-token latency, {c} streams | {p.step_ms(c, 0, 0, c * short / 1000):.1f} |" for c in CONCURRENCY]
    lines += [
        f"| inter-token latency, {c} streams, {LONG_PROMPT}-token prompts | {p.step_ms(c, 0, 0, c * long / 1000):.1f} |"
        for c in LONG_CONCURRENCY
    ]
    lines.append(f"| TTFT 1024 tokens, 896 cached | {ttft(BLOCK, 7 * BLOCK):.1f} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure a running server (--url) or one started here (--start)")
    m.add_argument("--url")
    m.add_argument("--start", choices=("vllm", "sim"))
    m.add_argument("--sim-arg", action="append", default=[], help="extra simulator argument (repeatable)")
    m.add_argument("--reps", type=int, default=5)
    m.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fit", help="fit the latency constants to vLLM measurements (samples pooled)")
    f.add_argument("data", type=Path, nargs="+")
    pr = sub.add_parser("predict", help="print what a profile predicts for the same measurements")
    pr.add_argument("profile")
    r = sub.add_parser("report", help="print the comparison table (markdown)")
    r.add_argument("--real", type=Path, nargs="+", required=True)
    r.add_argument("--sim", type=Path, nargs="+", required=True)
    args = parser.parse_args(argv)

    if args.command == "measure":
        if bool(args.url) == bool(args.start):
            parser.error("give exactly one of --url and --start")
        began = time.monotonic()
        if args.start:
            with started(args.start, args.sim_arg) as url:
                data = asyncio.run(measure(url, args.reps))
        else:
            data = asyncio.run(measure(args.url, args.reps))
        data["meta"] = {
            "target": args.start or args.url,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "load_average_after": os.getloadavg(),
            "duration_s": round(time.monotonic() - began, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1))
        print(
            json.dumps(
                {k: medians(v) if k in ("prefill_ttft_s", "decode_itl_s") else v for k, v in data.items()},
                indent=1,
            )
        )
    elif args.command == "predict":
        print(predict(args.profile))
    elif args.command == "fit":
        print(json.dumps(fit(merge([json.loads(p.read_text()) for p in args.data])), indent=1))
    else:
        real = merge([json.loads(p.read_text()) for p in args.real])
        sim = merge([json.loads(p.read_text()) for p in args.sim])
        print(report(real, sim))


if __name__ == "__main__":
    main()
