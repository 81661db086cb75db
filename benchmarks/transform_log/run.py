"""What a transformer hop and payload logging add to a request, measured side by side in one run.

    .venv/bin/python benchmarks/transform_log/run.py --rounds 5 --requests 300

One `llmserve up` serves four services on simulated vLLM workers (`--speed 1000`: the worker's own time is small
and the same for all), identical but for what this measures:

    plain    no transformer, no logger (the baseline)
    hooked   a no-op transformer (benchmarks/transform_log/noop.py: every hook returns what it got)
    logged   payload logging of requests and responses to a JSONL file (mode all)
    posted   payload logging to an HTTP sink (a local server that answers 200 to every event)

Each round sends `--requests` requests to each service in turn (the order shuffled per round, seeded), one at a
time from one client (closed loop, concurrency 1: latency well below capacity), non-streamed and streamed (16
tokens). Per round and variant: the client-side p50, and the CPU time per request of the `llmserve up` process (the
gateway; the controller idles), of the transformer's processes and of the worker's. The report shows the median over
rounds with the spread (min..max), and the p50 added to `plain`'s.

The client, the gateway, the transformer, the workers and the sink share this machine's cores; run it in a quiet
window. The result file (default benchmarks/results/transform_log.md) starts with the exact command, the machine,
the date and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / "benchmarks" / "results" / "transform_log.md"
VARIANTS = ("plain", "hooked", "logged", "posted")
SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  predictor:
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--speed", "1000", "--output-tokens", "16"]
{extra}"""
EXTRA = {
    "plain": "",
    "hooked": "  transformer: {{handler: benchmarks/transform_log/noop.py:NoOp}}\n",
    "logged": "  logger: {{mode: all, file: {work}/events.jsonl}}\n",
    "posted": "  logger: {{mode: all, url: {sink}}}\n",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@contextlib.contextmanager
def http_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events"
    finally:
        server.shutdown()


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    url: str
    control_url: str
    token: str

    def services(self) -> list[dict[str, Any]]:
        headers = {"authorization": f"Bearer {self.token}"}
        response = httpx.get(f"{self.control_url}/control/v1/services", headers=headers, timeout=10)
        response.raise_for_status()
        return list(response.json()["services"])


@contextlib.contextmanager
def llmserve_up(work: Path, sink: str) -> Iterator[Up]:
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    config = work / "services.yaml"
    config.write_text(
        "---\n".join(
            SERVICE.format(name=name, model_dir=model_dir, extra=EXTRA[name].format(work=work, sink=sink))
            for name in VARIANTS
        )
    )
    port, control_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "llmserve", "--log-level", "warning", "up", "-f", str(config), "--port", str(port),
           "--grpc-port", "0", "--control-port", str(control_port), "--state-dir", str(work / "state"),
           "--log-dir", str(work / "logs")]  # fmt: skip
    with open(work / "llmserve.log", "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        up: Up | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"llmserve up exited ({process.returncode}); see {work / 'llmserve.log'}")
            token_file = work / "state" / "control-token"
            with contextlib.suppress(httpx.HTTPError, OSError):
                up = up or Up(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control_port}",
                              token_file.read_text().strip())  # fmt: skip
                if all(ready(s) for s in up.services()) and len(up.services()) == len(VARIANTS):
                    break
            time.sleep(0.3)
        else:
            raise SystemExit("the services did not become ready within 120 s")
        assert up is not None
        yield up
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def ready(service: dict[str, Any]) -> bool:
    transformer = service.get("transformer")
    return bool(service["ready_replicas"] >= 1 and (transformer is None or transformer["ready_replicas"] >= 1))


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants."""
    try:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.NoSuchProcess:
        return 0.0


def own_cpu(pid: int) -> float:
    return sum(psutil.Process(pid).cpu_times()[:2])


@dataclass
class Sample:
    p50_ms: float
    gateway_ms: float  # CPU per request
    transformer_ms: float
    worker_ms: float


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, variant: str, mode: str, sample: Sample) -> None:
        self.samples.setdefault((variant, mode), []).append(sample)


def run_variant(up: Up, client: httpx.Client, service: dict[str, Any], mode: str, n: int) -> Sample:
    name = service["name"]
    worker_pids = [r["pid"] for r in service["replicas"] if r["pid"]]
    transformer_pids = [r["pid"] for r in (service.get("transformer") or {}).get("replicas", []) if r["pid"]]
    body = {"model": name, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16,
            "stream": mode == "stream"}  # fmt: skip
    before = (own_cpu(up.process.pid), sum(map(tree_cpu, transformer_pids)), sum(map(tree_cpu, worker_pids)))
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        if mode == "stream":
            with client.stream("POST", f"{up.url}/v1/chat/completions", json=body) as response:
                for _chunk in response.iter_raw():
                    pass
        else:
            response = client.post(f"{up.url}/v1/chat/completions", json=body)
            response.read()
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{name}: HTTP {response.status_code}")
    after = (own_cpu(up.process.pid), sum(map(tree_cpu, transformer_pids)), sum(map(tree_cpu, worker_pids)))
    gateway, transformer, worker = ((a - b) * 1000 / n for a, b in zip(after, before, strict=True))
    return Sample(statistics.median(latencies) * 1000, gateway, transformer, worker)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def report(results: Results, args: argparse.Namespace, command: str, load: tuple[float, float, float]) -> str:
    lines = [
        "# Transformer hop and payload logging: added latency and CPU per request",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- command: `{command}`",
        f"- {args.rounds} rounds x {args.requests} requests per variant and mode, one client, one request at a time "
        f"(far below capacity); variant order shuffled per round (seed {args.seed})",
        "- the client, the gateway (`llmserve up`), the transformer, the simulated workers and the HTTP sink share "
        "this machine's cores",
        "- median over rounds, (min..max) across rounds; CPU in ms per request",
        "",
    ]
    for mode in args.modes:
        plain = statistics.median(s.p50_ms for s in results.samples[("plain", mode)])
        lines += [
            f"## {'streamed (16 tokens)' if mode == 'stream' else 'non-streamed'}",
            "",
            "| variant | p50 ms | added p50 ms | gateway CPU | transformer CPU | worker CPU |",
            "|---|---|---|---|---|---|",
        ]
        for variant in VARIANTS:
            samples = results.samples[(variant, mode)]
            p50s = [s.p50_ms for s in samples]
            lines.append(
                f"| {variant} | {spread(p50s)} | {statistics.median(p50s) - plain:+.2f} | "
                f"{spread([s.gateway_ms for s in samples])} | {spread([s.transformer_ms for s in samples])} | "
                f"{spread([s.worker_ms for s in samples])} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="per round, variant and mode")
    parser.add_argument("--warmup", type=int, default=50, help="requests per variant and mode before the rounds")
    parser.add_argument("--modes", nargs="+", choices=("whole", "stream"), default=["whole", "stream"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT, help="the result file (markdown)")
    args = parser.parse_args(argv)
    command = " ".join(["python", "benchmarks/transform_log/run.py", *(argv if argv is not None else sys.argv[1:])])
    load = os.getloadavg()
    rng = random.Random(args.seed)
    results = Results()
    with (
        tempfile.TemporaryDirectory(prefix="llmserve-transform-log-") as tmp,
        http_sink() as sink,
        llmserve_up(Path(tmp), sink) as up,
        httpx.Client(timeout=60) as client,
    ):
        services = {s["name"]: s for s in up.services()}
        for mode in args.modes:  # warm-up: connections, tokenizers, the transformer's first calls
            for variant in VARIANTS:
                run_variant(up, client, services[variant], mode, args.warmup)
        for round_ in range(args.rounds):
            for variant in rng.sample(VARIANTS, len(VARIANTS)):
                for mode in args.modes:
                    results.add(variant, mode, run_variant(up, client, services[variant], mode, args.requests))
            print(f"[bench] round {round_ + 1}/{args.rounds} done", flush=True)
    text = report(results, args, command, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
