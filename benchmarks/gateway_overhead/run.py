"""What a proxy costs: the same fast fake OpenAI backend reached directly, through llmserve's gateway, through
vllm-router 0.1.17 (Rust, --policy round_robin) and through the LiteLLM proxy 1.80.17, measured with wrk.

Scenarios: non-streamed chat at c=1, 16, 64 and 32-chunk SSE streams at c=16. Rounds are interleaved (every target
runs each scenario once per round) and medians are reported; proxy CPU per request comes from the proxy
process's own CPU time (psutil) over the run.

    python benchmarks/gateway_overhead/run.py --rounds 3 --duration 10

Peers are installed into benchmarks/.work/ (separate venvs) on first use; wrk comes from Debian (apt-get install
wrk). Results are written to benchmarks/results/gateway_overhead.md with this command, the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = REPO / "benchmarks" / ".work"
PEERS = {
    "vllm-router": ["vllm-router==0.1.17"],
    "litellm": ["litellm[proxy]==1.80.17"],
}
SCENARIOS = [("c=1", 1, False), ("c=16", 16, False), ("c=64", 64, False), ("stream c=16", 16, True)]


@dataclass
class Target:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peer_python(peer: str) -> Path:
    venv = WORK / f"venv-{peer}"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"[bench] installing {peer} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[peer]], check=True)
    return python


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: process exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not come up in {timeout} s")


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )


def start_targets(backend_urls: list[str], names: list[str], args: argparse.Namespace) -> list[Target]:
    targets = []
    backend_url = backend_urls[0]
    for name in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = WORK / f"{name}.log"
        if name == "direct":
            targets.append(Target(name, backend_url))
            continue
        if name == "llmserve":
            workers = [a for u in backend_urls for a in ("--worker", u)]
            cmd = [sys.executable, str(HERE / "serve_gateway.py"), "--port", str(port),
                   "--routing-profile", args.llmserve_profile, *workers]  # fmt: skip
            if args.tokenizer_dir:
                cmd += ["--tokenizer-dir", args.tokenizer_dir]
            process = start(cmd, log)
            wait_http(f"{url}/health", process)
        elif name == "vllm-router":
            exe = peer_python("vllm-router").parent / "vllm-router"
            cmd = [str(exe), "--worker-urls", *backend_urls, "--policy", args.router_policy,
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
            process = start(cmd, log)
            wait_http(f"{url}/health", process)
        elif name == "litellm":
            exe = peer_python("litellm").parent / "litellm"
            config = WORK / "litellm.yaml"
            config.write_text(
                "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n"
                f"      api_base: {backend_url}/v1\n      api_key: unused\n"
            )
            cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
            process = start(cmd, log, {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})
            wait_http(f"{url}/health/liveliness", process, timeout=180)
        else:
            raise SystemExit(f"unknown target {name}")
        targets.append(Target(name, url, process))
    return targets


def cpu_seconds(process: subprocess.Popen[bytes] | None) -> float:
    if process is None:
        return 0.0
    proc = psutil.Process(process.pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


def run_wrk(url: str, connections: int, stream: bool, duration: int) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(HERE / "post.lua"),
        f"{url}/v1/chat/completions",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "STREAM": "1" if stream else "0"}, check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    data = json.loads(line[5:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--targets", default="direct,llmserve,vllm-router,litellm")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gateway_overhead.md")
    parser.add_argument("--backends", type=int, default=1, help="fake backends behind the proxies (direct: the first)")
    parser.add_argument("--llmserve-profile", default="token-aware", help="llmserve's routing profile")
    parser.add_argument("--tokenizer-dir", default=None, help="model dir whose tokenizer llmserve's routing uses")
    parser.add_argument("--router-policy", default="round_robin", help="vllm-router's --policy")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    WORK.mkdir(parents=True, exist_ok=True)
    backend_urls, backends = [], []
    for i in range(args.backends):
        port = free_port()
        backend_urls.append(f"http://127.0.0.1:{port}")
        backends.append(
            start([sys.executable, str(HERE / "fake_backend.py"), "--port", str(port)], WORK / f"backend{i}.log")
        )
    targets: list[Target] = []
    try:
        for url, backend in zip(backend_urls, backends, strict=True):
            wait_http(f"{url}/health", backend)
        targets = start_targets(backend_urls, args.targets.split(","), args)
        for target in targets:  # warm-up, and a check that every target answers correctly
            for stream in (False, True):
                run_wrk(target.url, 4, stream, 2)
        for round_no in range(args.rounds):
            for label, connections, stream in SCENARIOS:
                for target in targets:
                    before = cpu_seconds(target.process)
                    result = run_wrk(target.url, connections, stream, args.duration)
                    result["cpu_us_per_request"] = (
                        (cpu_seconds(target.process) - before) / max(result["requests"], 1) * 1e6
                    )
                    target.results.setdefault(label, []).append(result)
                    print(
                        f"[bench] round {round_no + 1} {label:<12} {target.name:<12} {result['rps']:8.0f} req/s "
                        f"p50 {result['p50_us'] / 1000:6.2f} ms p99 {result['p99_us'] / 1000:6.2f} ms "
                        f"cpu {result['cpu_us_per_request']:6.0f} us/req errors {result['errors']}"
                        f"+{result['non2xx']}",
                        flush=True,
                    )
    finally:
        for target in targets:
            if target.process is not None:
                os.killpg(target.process.pid, signal.SIGTERM)
        for backend in backends:
            os.killpg(backend.pid, signal.SIGTERM)
    write_report(args, targets)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_report(args: argparse.Namespace, targets: list[Target]) -> None:
    direct = next((t for t in targets if t.name == "direct"), None)
    lines = [
        "# Gateway overhead against a fast fake OpenAI backend",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; load from wrk (1 thread) on the same machine",
        f"- command: `python benchmarks/gateway_overhead/run.py --rounds {args.rounds} --duration {args.duration} "
        f"--targets {args.targets} --backends {args.backends} --llmserve-profile {args.llmserve_profile} "
        f"--router-policy {args.router_policy}"
        + (f" --tokenizer-dir {args.tokenizer_dir}" if args.tokenizer_dir else "")
        + "`",
        f"- medians of {args.rounds} interleaved rounds of {args.duration} s each; {args.backends} backend(s) behind "
        "the proxies (direct: the first): benchmarks/gateway_overhead/fake_backend.py (raw ASGI + "
        f"uvicorn/httptools/uvloop + orjson); llmserve routing profile {args.llmserve_profile}, vllm-router policy "
        f"{args.router_policy}",
        "",
        "| target | scenario | req/s | p50 ms | p99 ms | added p50 ms | proxy CPU us/req | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, _, _ in SCENARIOS:
        for target in targets:
            runs = target.results.get(label, [])
            added = ""
            if direct is not None and target is not direct:
                base = direct.results.get(label, [])
                added = f"{median([r['p50_us'] - b['p50_us'] for r, b in zip(runs, base, strict=False)]) / 1000:+.2f}"
            cpu = median([r["cpu_us_per_request"] for r in runs]) if target.process is not None else float("nan")
            p50 = median([r["p50_us"] for r in runs]) / 1000
            p99 = median([r["p99_us"] for r in runs]) / 1000
            lines.append(
                f"| {target.name} | {label} | {median([r['rps'] for r in runs]):.0f} | {p50:.2f} | {p99:.2f} | "
                f"{added} | {'' if cpu != cpu else f'{cpu:.0f}'} | "
                f"{sum(r['errors'] + r['non2xx'] for r in runs):.0f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
