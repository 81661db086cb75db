"""What splitting the control plane from the data plane costs and buys, measured side by side in one run.

    python benchmarks/topology/run.py hot-path --rounds 5 --duration 10
        the gateway's hot path reading an in-process registry (the old `llmserve up`: serve_gateway.py) vs a gateway
        process following a controller's watch (`llmserve gateway`), 2 fake backends, wrk at c=1 and c=16:
        added p50 and gateway CPU per request. Goal: no measurable difference (the watch is off the request path).
    python benchmarks/topology/run.py workers --rounds 5 --duration 10
        `llmserve gateway --workers 1` vs `--workers 2` on one port (SO_REUSEPORT), 2 fake backends, wrk at c=16
        and c=64; wrk, the backends and the gateways share this machine's cores.
    python benchmarks/topology/run.py restart --rounds 5
        gateway restart -> first token, on real vLLM-CPU: `llmserve up` restarted (one process: its workers restart
        too) vs `llmserve gateway` restarted beside a running `llmserve controller` (the worker keeps serving).
    python benchmarks/topology/run.py controller-restart --rounds 5
        serving impact of a controller restart under steady traffic (simulated workers, 8 clients): `llmserve up`
        restarted vs `llmserve controller` SIGKILLed and started again next to a running gateway: failed requests and
        p99 in the 20 s after the restart began, beside the p99 before it.

Every result file (benchmarks/results/topology_*.md) starts with its exact command, the machine, the date and the
load average. wrk comes from Debian (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository's benchmarks package

from benchmarks.gateway_overhead.run import cpu_seconds, free_port, run_wrk_short, start, wait_http  # noqa: E402

WORK = REPO / "benchmarks" / ".work" / "topology"
RESULTS = REPO / "benchmarks" / "results"
OVERHEAD = REPO / "benchmarks" / "gateway_overhead"
PYTHON = sys.executable
SMOLLM2 = REPO / "configs" / "quickstart.yaml"


def header(title: str, command: str, notes: list[str]) -> list[str]:
    load = os.getloadavg()
    return [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- command: `{command}`",
        *[f"- {note}" for note in notes],
        "",
    ]


def write(name: str, lines: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stop_group(process: subprocess.Popen[bytes] | None, sig: signal.Signals = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], digits: int = 2) -> str:
    """median [min, max]"""
    if not values:
        return "-"
    return f"{median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


# -- fake backends, a fixed controller, gateways ------------------------------------------------------------------
@contextlib.contextmanager
def fake_backends(count: int) -> Iterator[list[str]]:
    WORK.mkdir(parents=True, exist_ok=True)
    processes, urls = [], []
    try:
        for i in range(count):
            port = free_port()
            urls.append(f"http://127.0.0.1:{port}")
            processes.append(
                start([PYTHON, str(OVERHEAD / "fake_backend.py"), "--port", str(port)], WORK / f"b{i}.log")
            )
        for url, process in zip(urls, processes, strict=True):
            wait_http(f"{url}/health", process)
        yield urls
    finally:
        for process in processes:
            stop_group(process)


@dataclass
class Gateway:
    name: str
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def registry_gateway(backends: list[str]) -> Iterator[Gateway]:
    """The gateway reading an in-process registry with fixed endpoints (how `llmserve up` worked before the split)."""
    port = free_port()
    workers = [a for url in backends for a in ("--worker", url)]
    process = start([PYTHON, str(OVERHEAD / "serve_gateway.py"), "--port", str(port), *workers], WORK / "registry.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process)
        yield Gateway("in-process registry", f"http://127.0.0.1:{port}", process)
    finally:
        stop_group(process)


@contextlib.contextmanager
def watched_gateway(
    backends: list[str], workers: int = 1, name: str = "watched (llmserve gateway)"
) -> Iterator[Gateway]:
    """`llmserve gateway` following a control API (a fixed one: static_controller.py) over the real watch."""
    control_port, port = free_port(), free_port()
    control = start([PYTHON, str(HERE / "static_controller.py"), "--port", str(control_port),
                     *[a for url in backends for a in ("--worker", url)]], WORK / "control.log")  # fmt: skip
    gateway = None
    try:
        wait_http(f"http://127.0.0.1:{control_port}/health", control)
        gateway = start([PYTHON, "-m", "llmserve", "--log-level", "warning", "gateway", "--controller",
                         f"http://127.0.0.1:{control_port}", "--control-token", "bench", "--port", str(port),
                         "--grpc-port", "0", "--workers", str(workers)], WORK / f"gateway-{workers}.log")  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise SystemExit(f"the gateway did not become ready; see {WORK}/gateway-{workers}.log")
            time.sleep(0.2)
        yield Gateway(name, f"http://127.0.0.1:{port}", gateway)
    finally:
        stop_group(gateway)
        stop_group(control)


def measure(gateway: Gateway, connections: int, duration: int, stream: bool = False) -> dict[str, float]:
    before = cpu_seconds(gateway.process)
    result = run_wrk_short(gateway.url, connections, stream, duration)
    result["cpu_us_per_request"] = (cpu_seconds(gateway.process) - before) / max(result["requests"], 1) * 1e6
    return result


# -- hot path ------------------------------------------------------------------------------------------------------
def hot_path(args: argparse.Namespace) -> None:
    scenarios = [("c=1", 1), ("c=16", 16)]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with fake_backends(2) as backends, registry_gateway(backends) as old, watched_gateway(backends) as new:
        for gateway in (old, new):
            run_wrk_short(gateway.url, 4, False, 2)  # warm-up
        for round_no in range(args.rounds):
            for label, connections in scenarios:
                order = (old, new) if round_no % 2 == 0 else (new, old)
                for gateway in order:
                    result = measure(gateway, connections, args.duration)
                    results.setdefault((gateway.name, label), []).append(result)
                    print(
                        f"[hot-path] round {round_no + 1} {label} {gateway.name}: {result['rps']:.0f} req/s "
                        f"p50 {result['p50_us'] / 1000:.3f} ms, {result['cpu_us_per_request']:.0f} us/req",
                        flush=True,
                    )
    lines = header(
        "The split on the hot path: in-process registry vs a gateway following the controller's watch",
        f"python benchmarks/topology/run.py hot-path --rounds {args.rounds} --duration {args.duration}",
        [f"{args.rounds} interleaved rounds (order alternating) of {args.duration} s per scenario; 2 fake backends "
         "(benchmarks/gateway_overhead/fake_backend.py), default routing profile (token-aware); wrk (1 thread), the "
         "backends and the gateway share the machine's cores; CPU is the gateway process's own",
         "median [min, max] over the rounds"],
    )  # fmt: skip
    lines += ["| scenario | gateway | req/s | p50 ms | p99 ms | gateway CPU us/req | errors |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for label, _ in scenarios:
        for gateway in (old, new):
            runs = results[(gateway.name, label)]
            lines.append(
                f"| {label} | {gateway.name} | {spread([r['rps'] for r in runs], 0)} | "
                f"{spread([r['p50_us'] / 1000 for r in runs], 3)} | {spread([r['p99_us'] / 1000 for r in runs], 3)} | "
                f"{spread([r['cpu_us_per_request'] for r in runs], 0)} | "
                f"{sum(r['errors'] + r['non2xx'] for r in runs):.0f} |"
            )
        ratio = [
            w["cpu_us_per_request"] / r["cpu_us_per_request"]
            for r, w in zip(results[(old.name, label)], results[(new.name, label)], strict=True)
        ]
        lines.append(f"| {label} | watched / registry CPU per request (per round) | {spread(ratio)} | | | | |")
    write("topology_hot_path.md", lines)


# -- --workers -------------------------------------------------------------------------------------------------------
def workers(args: argparse.Namespace) -> None:
    scenarios = [("c=16", 16), ("c=64", 64)]
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    with fake_backends(2) as backends:
        for round_no in range(args.rounds):
            for count in (1, 2) if round_no % 2 == 0 else (2, 1):
                with watched_gateway(backends, workers=count, name=f"--workers {count}") as gateway:
                    run_wrk_short(gateway.url, 8, False, 2)
                    for label, connections in scenarios:
                        result = measure(gateway, connections, args.duration)
                        results.setdefault((count, label), []).append(result)
                        print(f"[workers] round {round_no + 1} --workers {count} {label}: {result['rps']:.0f} req/s",
                              flush=True)  # fmt: skip
    lines = header(
        "Gateway processes on one port: --workers 1 vs 2",
        f"python benchmarks/topology/run.py workers --rounds {args.rounds} --duration {args.duration}",
        [f"{args.rounds} rounds (order alternating) of {args.duration} s per scenario; 2 fake backends; wrk (1 "
         f"thread), the 2 backends and the gateway processes all share this machine's {os.cpu_count()} cores, so "
         "this shows the cost of the second process more than its gain; CPU is the sum over gateway processes",
         "median [min, max] over the rounds"],
    )  # fmt: skip
    lines += ["| scenario | gateway | req/s | p50 ms | p99 ms | gateway CPU us/req | errors |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for label, _ in scenarios:
        for count in (1, 2):
            runs = results[(count, label)]
            lines.append(
                f"| {label} | --workers {count} | {spread([r['rps'] for r in runs], 0)} | "
                f"{spread([r['p50_us'] / 1000 for r in runs])} | {spread([r['p99_us'] / 1000 for r in runs])} | "
                f"{spread([r['cpu_us_per_request'] for r in runs], 0)} | "
                f"{sum(r['errors'] + r['non2xx'] for r in runs):.0f} |"
            )
    write("topology_workers.md", lines)


# -- restart -> first token ----------------------------------------------------------------------------------------
@dataclass
class Processes:
    work: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        process = start([PYTHON, "-m", "llmserve", "--log-level", "warning", *argv], self.work / f"{name}.log")
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.started):
            stop_group(process)


async def first_token(url: str, model: str, limit_s: float) -> float:
    """Seconds until the first streamed token of a chat request, retrying while the gateway is not up yet."""
    began = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8, "stream": True}
    async with httpx.AsyncClient(timeout=limit_s) as client:
        while time.monotonic() - began < limit_s:
            try:
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                    if response.status_code == 200:
                        async for line in response.aiter_lines():
                            if line.startswith("data: {") and '"content"' in line:
                                return time.monotonic() - began
                    else:
                        await response.aread()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"no first token from {url} within {limit_s} s")


def wait_ready(url: str, limit_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited ({process.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready within {limit_s} s")


def restart(args: argparse.Namespace) -> None:
    single: list[float] = []
    split: list[float] = []
    for round_no in range(args.rounds):
        for mode in ("single", "split") if round_no % 2 == 0 else ("split", "single"):
            work = WORK / f"restart-{mode}-{round_no}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            procs = Processes(work)
            port, control = free_port(), free_port()
            common = ["--state-dir", str(work / "state"), "--log-dir", str(work / "logs")]
            try:
                if mode == "single":
                    up = ["up", "-f", str(SMOLLM2), "--port", str(port), "--grpc-port", "0",
                          "--control-port", str(control), *common]  # fmt: skip
                    first = procs.run("up", *up)
                    wait_ready(f"http://127.0.0.1:{port}", 900, first)
                    stop_group(first, signal.SIGINT)
                    began = time.monotonic()
                    procs.run("up-again", *up)
                else:
                    procs.run("controller", "controller", "-f", str(SMOLLM2), "--port", str(control), *common)
                    gateway_argv = ["gateway", "--controller", f"http://127.0.0.1:{control}", "--state-dir",
                                    str(work / "state"), "--port", str(port), "--grpc-port", "0"]  # fmt: skip
                    gateway = procs.run("gateway", *gateway_argv)
                    wait_ready(f"http://127.0.0.1:{port}", 900, gateway)
                    stop_group(gateway, signal.SIGTERM)
                    began = time.monotonic()
                    procs.run("gateway-again", *gateway_argv)
                asyncio.run(first_token(f"http://127.0.0.1:{port}", "smollm2", 900))
                took = time.monotonic() - began
                (single if mode == "single" else split).append(took)
                print(f"[restart] round {round_no + 1} {mode}: first token {took:.2f} s after the restart", flush=True)
            finally:
                procs.close()
    lines = header(
        "Gateway restart -> first token: one process (`llmserve up`) vs split (`llmserve gateway` beside a controller)",
        f"python benchmarks/topology/run.py restart --rounds {args.rounds}",
        ["real vLLM-CPU 0.32 serving SmolLM2-135M (configs/quickstart.yaml); the clock starts when the restarted "
         "process is started (the old one has exited) and stops at the first streamed content token of a chat "
         "request sent (and retried) from then on", f"{args.rounds} rounds, order alternating; median [min, max]"],
    )  # fmt: skip
    lines += ["| topology | what restarts | first token after the restart, s |", "| --- | --- | ---: |",
              f"| one process (`llmserve up`) | gateway, controller and the vLLM worker | {spread(single)} |",
              f"| split | the gateway only; the worker keeps serving | {spread(split, 3)} |"]  # fmt: skip
    write("topology_restart.md", lines)


# -- controller restart under steady traffic --------------------------------------------------------------------------
SIM_SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: sim}}
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 2
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2", "--speed", "10"]
"""


async def steady_traffic(url: str, clients: int, seconds: float) -> list[tuple[float, float, bool]]:
    """(start, latency, ok) of every request of `clients` loops for `seconds`."""
    body = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    outcomes: list[tuple[float, float, bool]] = []
    stop_at = time.monotonic() + seconds

    async def loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            began = time.monotonic()
            try:
                ok = (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            outcomes.append((began, time.monotonic() - began, ok))
            if not ok:
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return outcomes


def restart_after(
    delay_s: float,
    mark: list[float],
    procs: Processes,
    victim: subprocess.Popen[bytes],
    again: tuple[str, list[str]],
    mode: str,
) -> None:
    """After `delay_s`: note the time, stop `victim` (Ctrl-C for `up`, SIGKILL for a controller), start `again`."""
    time.sleep(delay_s)
    mark.append(time.monotonic())
    stop_group(victim, signal.SIGINT if mode == "single" else signal.SIGKILL)
    procs.run(again[0], *again[1])


def controller_restart(args: argparse.Namespace) -> None:
    rows: dict[str, list[tuple[int, int, float, float]]] = {"single": [], "split": []}
    model_dir = WORK / "sim-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    for round_no in range(args.rounds):
        for mode in ("single", "split") if round_no % 2 == 0 else ("split", "single"):
            work = WORK / f"ctl-{mode}-{round_no}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            config = work / "sim.yaml"
            config.write_text(SIM_SERVICE.format(model_dir=model_dir))
            procs = Processes(work)
            port, control = free_port(), free_port()
            common = ["--state-dir", str(work / "state"), "--log-dir", str(work / "logs")]
            try:
                if mode == "single":
                    up = ["up", "-f", str(config), "--port", str(port), "--grpc-port", "0", "--control-port",
                          str(control), *common]  # fmt: skip
                    victim = procs.run("up", *up)
                    again = ("up-again", up)
                else:
                    ctl = ["controller", "-f", str(config), "--port", str(control), *common]
                    victim = procs.run("controller", *ctl)
                    procs.run("gateway", "gateway", "--controller", f"http://127.0.0.1:{control}", "--state-dir",
                              str(work / "state"), "--port", str(port), "--grpc-port", "0")  # fmt: skip
                    again = ("controller-again", ctl)
                wait_ready(f"http://127.0.0.1:{port}", 120, victim)
                mark: list[float] = []
                killer = threading.Thread(target=restart_after, args=(10.0, mark, procs, victim, again, mode))
                killer.start()
                outcomes = asyncio.run(steady_traffic(f"http://127.0.0.1:{port}", 8, 35))
                killer.join()
                before = [lat for began, lat, ok in outcomes if began < mark[0] and ok]
                window = [(lat, ok) for began, lat, ok in outcomes if mark[0] <= began < mark[0] + 20]
                failed = sum(1 for _, ok in window if not ok)
                p99_before = statistics.quantiles(before, n=100)[98] * 1000 if len(before) > 10 else float("nan")
                ok_window = [lat for lat, ok in window if ok]
                p99_window = statistics.quantiles(ok_window, n=100)[98] * 1000 if len(ok_window) > 10 else float("nan")
                rows[mode].append((failed, len(window), p99_before, p99_window))
                print(f"[controller-restart] round {round_no + 1} {mode}: {failed}/{len(window)} failed, "
                      f"p99 {p99_before:.1f} -> {p99_window:.1f} ms", flush=True)  # fmt: skip
            finally:
                procs.close()
    lines = header(
        "Controller restart under steady traffic: one process (`llmserve up` restarted) vs split (controller SIGKILLed "
        "and started again beside a running gateway)",
        f"python benchmarks/topology/run.py controller-restart --rounds {args.rounds}",
        ["2 simulated vLLM workers (vllm-sim, cpu-smollm2 profile at 10x speed), 8 client loops sending 4-token chats "
         "for 35 s; the restart begins 10 s in; counted: the requests sent in the 20 s from the restart on",
         f"{args.rounds} rounds, order alternating; median [min, max]"],
    )  # fmt: skip
    lines += ["| topology | failed requests in the 20 s window | requests in the window | p99 before, ms | "
              "p99 of the successful ones in the window, ms |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for mode, label in (("single", "one process (`llmserve up`)"), ("split", "split (SIGKILL + restart)")):
        runs = rows[mode]
        lines.append(
            f"| {label} | {spread([float(r[0]) for r in runs], 0)} | {spread([float(r[1]) for r in runs], 0)} | "
            f"{spread([r[2] for r in runs], 1)} | {spread([r[3] for r in runs], 1)} |"
        )
    write("topology_controller_restart.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("hot-path", "workers", "restart", "controller-restart"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = parser.parse_args()
    if args.what in ("hot-path", "workers") and shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    WORK.mkdir(parents=True, exist_ok=True)
    {"hot-path": hot_path, "workers": workers, "restart": restart, "controller-restart": controller_restart}[args.what](
        args
    )


if __name__ == "__main__":
    main()
