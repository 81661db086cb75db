"""What tracing costs the gateway: the same gateway with tracing off and on (OTLP/HTTP to a local collector),
in front of the same fast fake OpenAI backends, measured with wrk in one run.

Two gateway processes (benchmarks/gateway_overhead/serve_gateway.py, the default token-aware profile over two
backends), one without and one with `--otlp-endpoint` (every request sampled, batched export to
benchmarks/tracing_overhead/collector.py, which decodes and counts the spans). Rounds are interleaved (off, on,
per scenario, every round); reported are medians over rounds of p50 / p99 latency, the added p50 (median of the
per-round differences) and the gateway process's CPU per request (psutil; the exporter's thread included).

    python benchmarks/tracing_overhead/run.py --rounds 5 --duration 10

Results go to benchmarks/results/tracing_overhead.md (or --out) with this command, the machine, the date and
the load average. wrk, both gateways, the backends and the collector share the machine's cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gateway_overhead.run import (  # noqa: E402 - after the path is set
    WORK,
    Target,
    cpu_seconds,
    free_port,
    run_wrk_short,
    start,
    wait_http,
)

OVERHEAD = REPO / "benchmarks" / "gateway_overhead"
SCENARIOS = [("c=1", 1, False), ("c=16", 16, False), ("stream c=16", 16, True)]


def spans_at(collector: str) -> int:
    return int(httpx.get(f"{collector}/count", timeout=5).text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tracing_overhead.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    processes = []
    try:
        backends = []
        for i in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            processes.append(start([sys.executable, str(OVERHEAD / "fake_backend.py"), "--port", str(port)],
                                   WORK / f"tracing-backend{i}.log"))  # fmt: skip
            wait_http(f"{url}/health", processes[-1])
            backends.append(url)
        port = free_port()
        collector = f"http://127.0.0.1:{port}"
        processes.append(start([sys.executable, str(HERE / "collector.py"), "--port", str(port)],
                               WORK / "tracing-collector.log"))  # fmt: skip
        wait_http(f"{collector}/count", processes[-1])
        targets = []
        for name, extra in (("tracing off", []), ("tracing on", ["--otlp-endpoint", f"{collector}/v1/traces"])):
            port = free_port()
            cmd = [sys.executable, str(OVERHEAD / "serve_gateway.py"), "--port", str(port),
                   *[a for url in backends for a in ("--worker", url)], *extra]  # fmt: skip
            env = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "PYTHONPATH": str(REPO)}
            process = start(cmd, WORK / f"tracing-{name.split()[1]}.log", env)
            processes.append(process)
            wait_http(f"http://127.0.0.1:{port}/health", process)
            targets.append(Target(name, f"http://127.0.0.1:{port}", process))
        for target in targets:  # warm-up, and a check that both answer
            for stream in (False, True):
                run_wrk_short(target.url, 4, stream, 2)
        spans: dict[str, list[float]] = {}
        for round_no in range(args.rounds):
            for label, connections, stream in SCENARIOS:
                for target in targets:
                    exported = spans_at(collector)
                    before = cpu_seconds(target.process)
                    result = run_wrk_short(target.url, connections, stream, args.duration)
                    result["cpu_us_per_request"] = (
                        (cpu_seconds(target.process) - before) / max(result["requests"], 1) * 1e6
                    )
                    target.results.setdefault(label, []).append(result)
                    if target.name == "tracing on":
                        time.sleep(6)  # the batch exporter sends every 5 s: count this run's spans
                        spans.setdefault(label, []).append(
                            (spans_at(collector) - exported) / max(result["requests"], 1)
                        )
                    print(f"[bench] round {round_no + 1} {label:<12} {target.name:<12} {result['rps']:8.0f} req/s "
                          f"p50 {result['p50_us'] / 1000:6.2f} ms cpu {result['cpu_us_per_request']:6.0f} us/req "
                          f"errors {result['errors']}+{result['non2xx']}", flush=True)  # fmt: skip
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
    write_report(args, targets, spans, load_before, os.getloadavg())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_report(
    args: argparse.Namespace,
    targets: list[Target],
    spans: dict[str, list[float]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    off, on = targets
    lines = [
        "# Tracing overhead: the gateway with tracing off and on",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}",
        f"- command: `python benchmarks/tracing_overhead/run.py --rounds {args.rounds} --duration {args.duration}`",
        f"- medians of {args.rounds} interleaved rounds of {args.duration} s; two fake backends "
        "(benchmarks/gateway_overhead/fake_backend.py) behind each gateway, token-aware profile; tracing on: every "
        "request sampled, OTLP/HTTP protobuf in batches to benchmarks/tracing_overhead/collector.py; wrk (1 thread), "
        "both gateways, the backends and the collector share the cores",
        "",
        "| scenario | p50 off ms | p50 on ms | added p50 ms | p99 off ms | p99 on ms | CPU off us/req | CPU on us/req "
        "| added CPU us/req | spans/req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, _, _ in SCENARIOS:
        a, b = off.results.get(label, []), on.results.get(label, [])
        added = median([y["p50_us"] - x["p50_us"] for x, y in zip(a, b, strict=False)]) / 1000
        cpu_a, cpu_b = median([r["cpu_us_per_request"] for r in a]), median([r["cpu_us_per_request"] for r in b])
        added_cpu = median([y["cpu_us_per_request"] - x["cpu_us_per_request"] for x, y in zip(a, b, strict=False)])
        errors = sum(r["errors"] + r["non2xx"] for r in [*a, *b])
        p50 = [median([r["p50_us"] for r in runs]) / 1000 for runs in (a, b)]
        p99 = [median([r["p99_us"] for r in runs]) / 1000 for runs in (a, b)]
        lines.append(
            f"| {label} | {p50[0]:.2f} | {p50[1]:.2f} | {added:+.2f} | {p99[0]:.2f} | {p99[1]:.2f} "
            f"| {cpu_a:.0f} | {cpu_b:.0f} | {added_cpu:+.0f} | "
            f"{median(spans.get(label, [])):.2f} | {errors:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
