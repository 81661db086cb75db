"""What a proxy costs at HEAD: the same fast fake OpenAI backends reached directly, through llmserve's gateway
(token-aware routing, the default: prefix hashes of the prompt text, token counts estimated), through llmserve
with aiohttp as its upstream client, through vllm-router 0.1.17 (`round_robin` and `cache_aware`) and through the
LiteLLM proxy 1.80.17 (one worker per core, as its production guide says, no callbacks), measured side by side.

Scenarios (issue 14):
- c=1 and c=16 non-streamed chat with ~2k-token prompts, half of them never seen before (post_rag.lua): the
  prompt hashing and the prefix index work for real;
- c=16 streams of 32 chunks spaced 5-20 ms like model tokens (fake_backend.py --chunk-gap-ms 5-20): what the
  proxy adds to each chunk's arrival (stream_probe.py), and CPU per stream.
Primary figure: the proxy's CPU per request (its process tree's user + system time, psutil, over the run), since
on a 2-core machine wrk, the backends and the proxy share the cores. Rounds are interleaved (every target runs each
scenario once per round); medians over rounds, with the range.

    python benchmarks/gateway_overhead/run.py --rounds 5 --duration 10          # `make bench-overhead`

Peers are installed into benchmarks/.work/ (separate venvs) on first use; wrk comes from Debian (apt-get install
wrk). Results: benchmarks/results/gateway_overhead_head.md (+ .json) with this command, the machine and the date.
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

from benchmarks.bars import Bar, Panel, draw

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = REPO / "benchmarks" / ".work"
PEERS = {
    "vllm-router": ["vllm-router==0.1.17"],
    "litellm": ["litellm[proxy]==1.80.17"],
}
SCENARIOS = [("2k prompts c=1", 1, False), ("2k prompts c=16", 16, False), ("spaced streams c=16", 16, True)]
ALL_TARGETS = "direct,llmserve,llmserve-aiohttp,vllm-router:round_robin,vllm-router:cache_aware,litellm"
CHUNK_GAP_MS = "5-20"


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
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path, **(env or {})},
            cwd=REPO, start_new_session=True,
        )  # fmt: skip


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL what is left after 10 s (LiteLLM's workers, for one)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def litellm_config(backend_urls: list[str]) -> str:
    """One deployment per backend, no callbacks, debug logging off (LiteLLM's production guide)."""
    lines = ["model_list:"]
    for url in backend_urls:
        lines += ["  - model_name: m", "    litellm_params:", "      model: openai/m", f"      api_base: {url}/v1",
                  "      api_key: unused"]  # fmt: skip
    lines += ["litellm_settings:", "  set_verbose: false", "  callbacks: []", "  success_callback: []",
              "  failure_callback: []", "router_settings:", "  routing_strategy: simple-shuffle"]  # fmt: skip
    return "\n".join(lines) + "\n"


def start_targets(backend_urls: list[str], names: list[str], args: argparse.Namespace) -> list[Target]:
    targets = []
    for name in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = WORK / f"overhead-{name.replace(':', '-')}.log"
        if name == "direct":
            targets.append(Target(name, backend_urls[0]))
            continue
        if name in ("llmserve", "llmserve-aiohttp"):
            workers = [a for u in backend_urls for a in ("--worker", u)]
            cmd = [sys.executable, str(HERE / "serve_gateway.py"), "--port", str(port),
                   "--routing-profile", args.llmserve_profile, *workers]  # fmt: skip
            if name == "llmserve-aiohttp":
                cmd += ["--upstream", "aiohttp"]
            process = start(cmd, log)
            wait_http(f"{url}/health", process)
        elif name.startswith("vllm-router:"):
            exe = peer_python("vllm-router").parent / "vllm-router"
            cmd = [str(exe), "--worker-urls", *backend_urls, "--policy", name.split(":", 1)[1],
                   "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
                   "--log-level", "warning"]  # fmt: skip
            process = start(cmd, log)
            wait_http(f"{url}/health", process)
        elif name == "litellm":
            exe = peer_python("litellm").parent / "litellm"
            config = WORK / "litellm.yaml"
            config.write_text(litellm_config(backend_urls))
            cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                   "--num_workers", str(args.litellm_workers)]  # fmt: skip
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


def _wrk(url: str, connections: int, duration: int, script: str, env: dict[str, str]) -> dict[str, float]:
    """wrk (1 thread) running `script` against the chat route; the JSON line the script prints, plus req/s."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(HERE / script),
           f"{url}/v1/chat/completions"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    data: dict[str, float] = json.loads(line[5:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def run_wrk(url: str, connections: int, duration: int, seed: int) -> dict[str, float]:
    return _wrk(url, connections, duration, "post_rag.lua", {"SEED": str(seed)})


def run_wrk_short(url: str, connections: int, stream: bool, duration: int) -> dict[str, float]:
    """wrk with post.lua: one short chat prompt, streamed or not (the topology and tracing benchmarks, which compare
    a gateway with itself, not the routing's work on long prompts)."""
    return _wrk(url, connections, duration, "post.lua", {"STREAM": "1" if stream else "0"})


def run_streams(url: str, concurrency: int, duration: int) -> dict[str, float]:
    """Spaced streams for about `duration` seconds (32 chunks x 12.5 ms mean gap = ~0.4 s a stream)."""
    streams = max(concurrency, int(duration / 0.4 * concurrency))
    cmd = [sys.executable, str(HERE / "stream_probe.py"), url, "--streams", str(streams),
           "--concurrency", str(concurrency)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    data: dict[str, float] = json.loads(next(line for line in out.splitlines() if line.startswith("JSON "))[5:])
    data["requests"] = data["streams"]
    data["rps"] = data["streams_per_s"]
    return data


def measure(target: Target, label: str, connections: int, stream: bool, duration: int, seed: int) -> dict[str, float]:
    before = cpu_seconds(target.process)
    result = (
        run_streams(target.url, connections, duration) if stream else run_wrk(target.url, connections, duration, seed)
    )
    result["cpu_us_per_request"] = (cpu_seconds(target.process) - before) / max(result["requests"], 1) * 1e6
    return result


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario run")
    parser.add_argument("--targets", default=ALL_TARGETS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gateway_overhead_head.md")
    parser.add_argument("--backends", type=int, default=2, help="fake backends behind the proxies (direct: the first)")
    parser.add_argument("--llmserve-profile", default="token-aware", help="llmserve's routing profile")
    parser.add_argument("--litellm-workers", type=int, default=os.cpu_count() or 1, help="LiteLLM --num_workers")
    return parser


def main() -> None:
    args = argument_parser().parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    backend_urls, backends = [], []
    for i in range(args.backends):
        port = free_port()
        backend_urls.append(f"http://127.0.0.1:{port}")
        cmd = [sys.executable, str(HERE / "fake_backend.py"), "--port", str(port), "--chunk-gap-ms", CHUNK_GAP_MS,
               "--seed", str(i)]  # fmt: skip
        backends.append(start(cmd, WORK / f"overhead-backend{i}.log"))
    targets: list[Target] = []
    try:
        for url, backend in zip(backend_urls, backends, strict=True):
            wait_http(f"{url}/health", backend)
        targets = start_targets(backend_urls, args.targets.split(","), args)
        for target in targets:  # warm-up, and a check that every target answers
            run_wrk(target.url, 2, 2, seed=99)
            run_streams(target.url, 2, 1)
        for round_no in range(args.rounds):
            for label, connections, stream in SCENARIOS:
                for target in targets:
                    result = measure(target, label, connections, stream, args.duration, seed=round_no)
                    target.results.setdefault(label, []).append(result)
                    extra = f" chunk +{result['chunk_delay_p50_ms']:.2f} ms" if stream else ""
                    print(
                        f"[bench] round {round_no + 1} {label:<20} {target.name:<24} {result['rps']:8.0f} req/s "
                        f"p50 {result.get('p50_us', 0) / 1000:6.2f} ms cpu {result['cpu_us_per_request']:6.0f} "
                        f"us/req errors {result.get('errors', 0)}+{result.get('non2xx', 0)}{extra}",
                        flush=True,
                    )
    finally:
        stop([t.process for t in targets if t.process is not None] + backends)
    write_report(args, targets, load_before)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _range(values: list[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def errors(runs: list[dict[str, float]]) -> float:
    """Failed requests over runs: transport errors plus non-2xx answers (stream runs count only the former)."""
    return sum(r["errors"] + r.get("non2xx", 0.0) for r in runs)


def summarise(targets: list[Target]) -> dict[str, dict[str, dict[str, float]]]:
    """Per target and scenario: medians over rounds (and the added latency against direct, per round)."""
    direct = next((t for t in targets if t.name == "direct"), None)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for target in targets:
        for label, _, stream in SCENARIOS:
            runs = target.results.get(label, [])
            base = direct.results.get(label, []) if direct is not None and target is not direct else []
            row = {"rps": median([r["rps"] for r in runs]),
                   "cpu_us_per_request": median([r["cpu_us_per_request"] for r in runs]),
                   "cpu_us_per_request_min": min((r["cpu_us_per_request"] for r in runs), default=float("nan")),
                   "cpu_us_per_request_max": max((r["cpu_us_per_request"] for r in runs), default=float("nan")),
                   "errors": errors(runs)}  # fmt: skip
            key = "chunk_delay_p50_ms" if stream else "p50_us"
            scale = 1.0 if stream else 1000.0
            if base:
                row["added_p50_ms"] = median([(r[key] - b[key]) / scale for r, b in zip(runs, base, strict=False)])
            if stream:
                row["chunk_delay_p99_ms"] = median([r["chunk_delay_p99_ms"] for r in runs])
            out.setdefault(target.name, {})[label] = row
    return out


def is_default(args: argparse.Namespace) -> bool:
    """Whether `args` are what `make bench-overhead` passes (its defaults, the default result file)."""
    defaults = vars(argument_parser().parse_args([]))
    return all(vars(args)[key] == value for key, value in defaults.items())


def describe(name: str, args: argparse.Namespace) -> str:
    """One target's configuration, as the report's header states it."""
    if name == "llmserve":
        return f"llmserve: profile {args.llmserve_profile} (prefix hashes of the prompt text, no tokenizer)"
    if name == "llmserve-aiohttp":
        return "llmserve-aiohttp: the same with aiohttp as the upstream client"
    if name.startswith("vllm-router:"):
        return f"{PEERS['vllm-router'][0].replace('==', ' ')} --policy {name.partition(':')[2]}"
    if name == "litellm":
        version = PEERS["litellm"][0].partition("==")[2]
        return f"LiteLLM {version} with --num_workers {args.litellm_workers}, no callbacks, debug off"
    return name


def write_report(args: argparse.Namespace, targets: list[Target], load_before: tuple[float, float, float]) -> None:
    direct = next((t for t in targets if t.name == "direct"), None)
    names = [t.name for t in targets]
    lines = [
        "# Gateway overhead at HEAD: 2k-token prompts, spaced streams, CPU per request",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')} UTC",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; load average before {[round(x, 2) for x in load_before]}, after "
        f"{[round(x, 2) for x in os.getloadavg()]}; wrk (1 thread), the backends and the proxy share the cores",
        f"- command: `python benchmarks/gateway_overhead/run.py --rounds {args.rounds} --duration {args.duration} "
        f"--targets {args.targets} --backends {args.backends} --llmserve-profile {args.llmserve_profile} "
        f"--litellm-workers {args.litellm_workers}`{' (`make bench-overhead`)' if is_default(args) else ''}",
        f"- {args.backends} fake backends (benchmarks/gateway_overhead/fake_backend.py, stream chunks spaced "
        f"{CHUNK_GAP_MS} ms); " + "; ".join(describe(name, args) for name in names if name != "direct"),
        f"- medians of {args.rounds} interleaved rounds of ~{args.duration} s, [min-max] over rounds; non-streamed "
        "scenarios: ~2k-token prompts (1500 words), half reused from 8 documents, half never seen (post_rag.lua)",
        "",
        "| target | scenario | proxy CPU us/req | req/s (streams/s) | p50 ms | p99 ms | added p50 ms | "
        "chunk delay p50 / p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary = summarise(targets)
    for label, _, stream in SCENARIOS:
        for target in targets:
            runs = target.results.get(label, [])
            row = summary[target.name][label]
            cpu = _range([r["cpu_us_per_request"] for r in runs]) if target.process is not None else "-"
            added = f"{row['added_p50_ms']:+.2f}" if "added_p50_ms" in row else ""
            if stream:
                p50 = p99 = "-"
                chunk = f"{median([r['chunk_delay_p50_ms'] for r in runs]):.2f} / {row['chunk_delay_p99_ms']:.2f}"
            else:
                p50 = f"{median([r['p50_us'] for r in runs]) / 1000:.2f}"
                p99 = f"{median([r['p99_us'] for r in runs]) / 1000:.2f}"
                chunk = "-"
            lines.append(
                f"| {target.name} | {label} | {cpu} | {_range([r['rps'] for r in runs])} | {p50} | {p99} | {added} | "
                f"{chunk} | {errors(runs):.0f} |"
            )
    lines += ["", "added p50: median over rounds of (target - direct) in the same round; for streams, per chunk.", ""]
    if direct is None:
        lines.append("(no direct target: added latencies not computed)")
    lines += verdicts(summary)
    picture = args.out.with_suffix(".png")
    lines += ["", f"![proxy CPU per request]({picture.name})"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"summary": summary, "verdicts": verdicts(summary)}, indent=1))
    plot(targets, args, picture)
    print("\n".join(lines))


def plot(targets: list[Target], args: argparse.Namespace, path: Path) -> None:
    """Proxy CPU per request, a panel per scenario (log scale: LiteLLM costs ~30x the others); a target that had
    errors in a scenario is left out of that panel (its CPU per request would be that of failing fast)."""
    panels = []
    for label, _, _ in SCENARIOS:
        bars = []
        for target in (t for t in targets if t.process is not None):
            runs = target.results.get(label, [])
            if runs and not errors(runs):
                bars.append(Bar(target.name, [r["cpu_us_per_request"] for r in runs], ours=target.name == "llmserve"))
        panels.append(Panel(label, "proxy CPU, us per request (streams: per stream), log", bars, log=True))
    draw(panels, f"{args.backends} fake backends, token-aware routing; median and range of {args.rounds} rounds; "
         "a target with errors in a scenario is not drawn", path)  # fmt: skip


def verdicts(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The issue's goals, checked: CPU per request <= vllm-router cache_aware's at c=16 and on streams; added p50
    <= 0.5 ms at c=1; and whether aiohttp as upstream client costs more CPU per request than ours."""
    lines = []
    ours, peer, lib = summary.get("llmserve"), summary.get("vllm-router:cache_aware"), summary.get("llmserve-aiohttp")
    if ours and peer:
        for label in ("2k prompts c=16", "spaced streams c=16"):
            a, b = ours[label]["cpu_us_per_request"], peer[label]["cpu_us_per_request"]
            lines.append(f"- {label}: llmserve {a:.0f} vs vllm-router cache_aware {b:.0f} us CPU per request "
                         f"(goal: no more): {'met' if a <= b else 'MISSED'}")  # fmt: skip
    if ours and "added_p50_ms" in ours["2k prompts c=1"]:
        added = ours["2k prompts c=1"]["added_p50_ms"]
        lines.append(f"- 2k prompts c=1: llmserve adds {added:+.2f} ms p50 (goal <= 0.5 ms): "
                     f"{'met' if added <= 0.5 else 'MISSED'}")  # fmt: skip
    if ours and lib:
        for label, _, _ in SCENARIOS:
            a, b = ours[label]["cpu_us_per_request"], lib[label]["cpu_us_per_request"]
            if lib[label].get("errors"):
                lines.append(f"- {label}: upstream client, aiohttp had {lib[label]['errors']:.0f} errors: no ratio")
                continue
            lines.append(f"- {label}: upstream client, ours {a:.0f} vs aiohttp {b:.0f} us CPU per request "
                         f"({b / a:.2f}x)")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
