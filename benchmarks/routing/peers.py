"""Real peer routers on the same fleet: 8 simulated vLLM workers over HTTP, the same seeded traces, real time.

    python -m benchmarks.routing.peers          # `make bench-peers`: rag and chat at 0.7 of capacity, 5 seeds (~45 min)

Targets (each run: fresh workers with empty caches, one router, one trace):
- `vllm-router:cache_aware` (vllm-router 0.1.17, Rust; installed into benchmarks/.work/venv-vllm-router);
- `sglang-router:cache_aware` (sglang-router 0.3.2 from PyPI, Rust; benchmarks/.work/venv-sglang-router), if it
  starts against vLLM-style workers (the harness checks and says so in the result file);
- llmserve's gateway (`benchmarks/gateway_overhead/serve_gateway.py`) with each profile: `token-aware` (ours),
  `sticky-sessions`, `least-request`, `llm-d-style`, `prefix-chars` (production-stack's policy, seeded).

Workers: `python -m llmserve.workers.sim --profile h100-llama-8b --speed S` (a model estimate, see
llmserve/workers/sim/profiles.py), slowed by `--speed` so that 8 simulators, a router and the load generator fit
on the machine; times are reported in simulated seconds (wall x speed). Load: a fraction of the best policy's
capacity from the virtual-time sweep (`routing_virtual.json`, scaled linearly from its fleet to this one), so the
two harnesses sweep the same loads. TTFT at the client (first content token); goodput at the same SLO.
Peers' processes live under benchmarks/.work; nothing of theirs is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.bars import Bar, Panel, draw
from benchmarks.routing.workloads import CLOSED_LOOP, Session, Turn, Workload, build, session_lifetime_s

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "benchmarks" / ".work"
RESULTS = REPO / "benchmarks" / "results"
PEERS = {"vllm-router": "vllm-router==0.1.17", "sglang-router": "sglang-router==0.3.2"}
TARGETS = (
    "vllm-router:cache_aware", "sglang-router:cache_aware", "token-aware", "llm-d-style", "sticky-sessions",
)  # fmt: skip
MORE_TARGETS = ("least-request", "prefix-chars", "round-robin")  # --targets may add them


@dataclass
class Outcome:
    sent: float  # simulated seconds since the trace started
    ttft: float | None = None  # simulated seconds
    error: str | None = None


@dataclass
class Run:
    target: str
    workload: str
    load: float
    rate: float
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peer_bin(peer: str, exe: str) -> Path:
    venv = WORK / f"venv-{peer}"
    if not (venv / "bin" / "python").exists():
        print(f"[peers] installing {PEERS[peer]} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", PEERS[peer]], check=True)
    return venv / "bin" / exe


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited ({process.returncode}); see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout} s; see {log}")


class Fleet:
    """Fresh simulated workers and one router in front of them."""

    def __init__(self, args: argparse.Namespace, target: str, seed: int) -> None:
        self.args = args
        self.target = target
        self.seed = seed
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[str] = []
        self.url = ""

    def _start(self, cmd: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        WORK.mkdir(parents=True, exist_ok=True)
        log = WORK / f"peers-{name}.log"
        path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                       env={**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "0"})  # fmt: skip
        self.processes.append(process)
        return process, log

    def __enter__(self) -> Fleet:
        try:
            self._start_all()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_all(self) -> None:
        args = self.args
        for i in range(args.workers):
            port = free_port()
            cmd = [sys.executable, "-m", "llmserve.workers.sim", "--host", "127.0.0.1", "--port", str(port),
                   "--model", "m", "--profile", args.profile, "--num-blocks", str(args.kv_blocks),
                   "--speed", str(args.speed)]  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, *self._start(cmd, f"worker{i}"))
            self.workers.append(url)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        name, _, policy = self.target.partition(":")
        if name == "vllm-router":
            cmd = [str(peer_bin("vllm-router", "vllm-router")), "--worker-urls", *self.workers, "--policy", policy,
                   "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
                   "--log-level", "warning"]  # fmt: skip
        elif name == "sglang-router":
            python = peer_bin("sglang-router", "python")
            cmd = [str(python), "-m", "sglang_router.launch_router", "--worker-urls", *self.workers,
                   "--policy", policy, "--host", "127.0.0.1", "--port", str(port),
                   "--prometheus-port", str(free_port()), "--log-level", "warn"]  # fmt: skip
        else:  # an llmserve profile
            cmd = [sys.executable, str(REPO / "benchmarks" / "gateway_overhead" / "serve_gateway.py"),
                   "--port", str(port), "--model", "m", "--routing-profile", self.target, "--seed", str(self.seed),
                   *[a for w in self.workers for a in ("--worker", w)]]  # fmt: skip
        wait_ready(self.url, *self._start(cmd, "router"), timeout=120)

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


async def send(
    session: aiohttp.ClientSession, url: str, turn: Turn, t0: float, speed: float, run: Run
) -> tuple[Outcome, str]:
    body = {"model": "m", "messages": turn.messages, "max_tokens": turn.max_tokens, "stream": True,
            "ignore_eos": True}  # fmt: skip
    headers = {"x-session-id": turn.session} if turn.session else {}
    started = time.perf_counter()
    outcome = Outcome(sent=(started - t0) * speed)
    run.outcomes.append(outcome)
    answer: list[str] = []
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status != 200:
                outcome.error = f"HTTP {response.status}"
                return outcome, ""
            async for raw in response.content:
                line = raw.decode("utf-8", "replace")
                if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                    if outcome.ttft is None:
                        outcome.ttft = (time.perf_counter() - started) * speed
                    answer.append(line.split('"content":"', 1)[1].split('"', 1)[0])
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome.error = type(exc).__name__
    return outcome, "".join(answer)


async def replay(url: str, workload: Workload, speed: float, run: Run) -> None:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()

        async def at(turn: Turn) -> None:
            await asyncio.sleep(max(0.0, t0 + turn.at / speed - time.perf_counter()))
            await send(session, url, turn, t0, speed, run)

        async def conversation(s: Session) -> None:
            await asyncio.sleep(max(0.0, t0 + s.start / speed - time.perf_counter()))
            history = [{"role": "system", "content": s.system}]
            for question in s.questions:
                history.append({"role": "user", "content": question})
                _, answer = await send(session, url, Turn(0, list(history), s.max_tokens, s.name), t0, speed, run)
                history.append({"role": "assistant", "content": answer})
                await asyncio.sleep(s.think_s / speed)

        await asyncio.gather(*(at(t) for t in workload.turns), *(conversation(s) for s in workload.sessions))


def capacity_for(args: argparse.Namespace, workload: str) -> float:
    """The best policy's capacity in the virtual-time sweep for this workload and KV size, scaled to our fleet."""
    data = json.loads(Path(args.capacity_from).read_text())
    for cell in data["cells"]:
        if cell["workload"] == workload and cell["kv_blocks"] == args.kv_blocks:
            return float(cell["capacity"][cell["best"]]) * args.workers / data["meta"]["replicas"]
    raise SystemExit(f"{args.capacity_from}: no {workload} cell with kv_blocks {args.kv_blocks}")


def summarise(run: Run, start: float, end: float, slo_s: float) -> dict[str, Any]:
    window = [o for o in run.outcomes if start <= o.sent <= end]
    ttfts = sorted(o.ttft for o in window if o.ttft is not None)
    met = sum(1 for t in ttfts if t <= slo_s)
    return {
        "target": run.target, "workload": run.workload, "load": run.load, "rate": run.rate, "seed": run.seed,
        "requests": len(window), "errors": sum(1 for o in window if o.error or o.ttft is None),
        "mean_ttft_s": statistics.fmean(ttfts) if ttfts else float("nan"),
        "p99_ttft_s": ttfts[int(0.99 * len(ttfts))] if ttfts else float("nan"),
        "goodput": met / (end - start), "slo_met": met / len(window) if window else 0.0,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="rag,chat")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--loads", default="0.7")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--profile", default="h100-llama-8b")
    parser.add_argument("--kv-blocks", type=int, default=2048, help="KV blocks per worker (a size of the sweep)")
    parser.add_argument(
        "--speed", type=float, default=0.25, help="simulated seconds per wall second (lower it if the machine lags)"
    )
    parser.add_argument("--warm-requests", type=int, default=150)
    parser.add_argument("--measured-requests", type=int, default=400)
    parser.add_argument("--slo-ms", type=float, default=500.0)
    parser.add_argument("--capacity-from", default=str(RESULTS / "routing_virtual.json"))
    parser.add_argument("--out", type=Path, default=RESULTS / "routing_peers.md")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON beside --out; no run")
    args = parser.parse_args(argv)
    if args.replot:  # with the options of the run that wrote the JSON
        data = json.loads(args.out.with_suffix(".json").read_text())
        ran = parser.parse_args([*shlex.split(data["meta"]["command"])[3:], "--out", str(args.out)])
        plot(data["results"], ran, args.out.with_suffix(".png"))
        return
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for workload in args.workloads.split(","):
        capacity = capacity_for(args, workload)
        for load in (float(x) for x in args.loads.split(",")):
            rate = round(capacity * load, 3)
            start = session_lifetime_s() if workload in CLOSED_LOOP else args.warm_requests / rate
            end = start + args.measured_requests / rate
            for seed in range(args.seeds):
                trace = build(workload, seed, duration_s=end, rate=rate)
                for target in args.targets.split(","):
                    if target in failures:
                        continue
                    run = Run(target, workload, load, rate, seed)
                    try:
                        with Fleet(args, target, seed) as fleet:
                            asyncio.run(replay(fleet.url, trace, args.speed, run))
                    except RuntimeError as exc:
                        failures[target] = str(exc)
                        print(f"[peers] {target} does not run here: {exc}", flush=True)
                        continue
                    row = summarise(run, start, end, args.slo_ms / 1000)
                    results.append(row)
                    print(f"[peers] {workload} load {load:g} seed {seed} {target:<26} mean "
                          f"{row['mean_ttft_s'] * 1000:8.1f} ms goodput {row['goodput']:7.1f} errors {row['errors']}",
                          flush=True)  # fmt: skip
    write_report(args, results, failures, load_before)


OURS = "token-aware"
PEER_TARGETS = ("vllm-router:cache_aware", "sglang-router:cache_aware", "llm-d-style", "sticky-sessions")
GOAL_TTFT, GOAL_GOODPUT = 1.3, 1.2  # issue 14: token-aware against the best peer on that workload


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def _per_seed(by_key: dict[tuple[Any, ...], dict[str, Any]], target: str, cell: tuple[str, float],
              seeds: list[int]) -> list[dict[str, Any]] | None:  # fmt: skip
    """The target's run for each seed of a workload and load, or None if any seed is missing."""
    found = [by_key.get((target, *cell, s)) for s in seeds]
    return [r for r in found if r is not None] if all(found) else None


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    """Token-aware against the best peer (lowest median mean TTFT over seeds) per workload and load, seed by seed."""
    lines: list[str] = []
    by_key = {(r["target"], r["workload"], r["load"], r["seed"]): r for r in results}
    for workload, load in dict.fromkeys((r["workload"], r["load"]) for r in results):
        seeds = sorted({r["seed"] for r in results if (r["workload"], r["load"]) == (workload, load)})
        ours = _per_seed(by_key, OURS, (workload, load), seeds)
        peers = {p: rows for p in PEER_TARGETS if (rows := _per_seed(by_key, p, (workload, load), seeds)) is not None}
        if ours is None or not peers:
            continue
        best = min(peers, key=lambda p: statistics.median(r["mean_ttft_s"] for r in peers[p]))
        ttft = [b["mean_ttft_s"] / o["mean_ttft_s"] for b, o in zip(peers[best], ours, strict=True)]
        good = [o["goodput"] / b["goodput"] for b, o in zip(peers[best], ours, strict=True)]
        ttft_ok, good_ok = statistics.median(ttft) >= GOAL_TTFT, statistics.median(good) >= GOAL_GOODPUT
        lines.append(
            f"- {workload} at {load:g} of capacity: best peer {best}; its mean TTFT / token-aware's "
            f"{_spread(ttft)}x (goal >= {GOAL_TTFT:g}x: {'met' if ttft_ok else 'MISSED'}); goodput token-aware / "
            f"{best} {_spread(good)}x (goal >= {GOAL_GOODPUT:g}x: {'met' if good_ok else 'MISSED'}; {best} meets "
            f"the SLO for {statistics.median(r['slo_met'] for r in peers[best]):.0%} of requests at this load)"
        )
    return lines


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """Mean TTFT and goodput per target, a pair of panels per workload: median bars, the seed range as error bars."""
    panels = []
    for workload, load in dict.fromkeys((r["workload"], r["load"]) for r in results):
        rows = [r for r in results if (r["workload"], r["load"]) == (workload, load)]
        targets = list(dict.fromkeys(r["target"] for r in rows))
        goodput = f"goodput, req/s at TTFT <= {args.slo_ms:g} ms"
        for key, scale, label, log in (("mean_ttft_s", 1000.0, "mean TTFT, ms (log)", True),
                                       ("goodput", 1.0, goodput, False)):  # fmt: skip
            bars = [Bar(t, [r[key] * scale for r in rows if r["target"] == t], ours=t == OURS) for t in targets]
            panels.append(Panel(f"{workload}, load {load:g} of capacity", label, bars, log=log))
    draw(panels, f"{args.workers} simulated workers ({args.profile}, model estimate), {args.kv_blocks} KV blocks; "
         f"median and range of {args.seeds} seeds", path)  # fmt: skip


def write_report(
    args: argparse.Namespace, results: list[dict[str, Any]], failures: dict[str, str], load_before: tuple[float, ...]
) -> None:
    def cell(rows: list[dict[str, Any]], key: str, scale: float) -> str:
        return _spread([r[key] * scale for r in rows], "{:.1f}") if rows else "-"

    command = (
        f"python -m benchmarks.routing.peers --workloads {args.workloads} --targets {args.targets} "
        f"--loads {args.loads} --seeds {args.seeds} --workers {args.workers} --profile {args.profile} "
        f"--kv-blocks {args.kv_blocks} --speed {args.speed:g} --warm-requests {args.warm_requests} "
        f"--measured-requests {args.measured_requests} --slo-ms {args.slo_ms:g}"
    )
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes")
    load_after = os.getloadavg()
    lines = [
        f"# Routing on {args.workers} simulated vLLM workers over HTTP: real peer routers, the same traces",
        "",
        f"- command: `{command}` (`make bench-peers`)",
        f"- date: {date} UTC; machine: {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average before "
        f"{[round(x, 2) for x in load_before]}, after {[round(x, 2) for x in load_after]}; the workers, the router "
        "and the load generator share the cores",
        f"- workers: llmserve.workers.sim, profile {args.profile} (**model estimate**, not calibrated on a GPU), "
        f"{args.kv_blocks} KV blocks each, speed {args.speed:g}; times in simulated seconds; loads are fractions of "
        "the best policy's capacity in `routing_virtual.json`, scaled to this fleet",
        "- every random choice seeded: the traces (seed s) and llmserve's pickers; the Rust routers' own "
        "randomness (if any) is theirs. median [min-max] over seeds.",
    ]
    for target, why in failures.items():
        lines.append(f"- **{target} did not run**: {why}")
    lines += ["", "| workload | load | target | mean TTFT ms | p99 TTFT ms | goodput req/s | errors |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    keys = dict.fromkeys((r["workload"], r["load"], r["target"]) for r in results)
    for workload, load, target in keys:
        rows = [r for r in results if (r["workload"], r["load"], r["target"]) == (workload, load, target)]
        lines.append(f"| {workload} | {load:g} | {target} | {cell(rows, 'mean_ttft_s', 1000)} | "
                     f"{cell(rows, 'p99_ttft_s', 1000)} | {cell(rows, 'goodput', 1)} | "
                     f"{sum(r['errors'] for r in rows)} |")  # fmt: skip
    goals = verdicts(results)
    picture = args.out.with_suffix(".png")
    lines += ["", "Goals (issue 14), seed by seed against the best peer:", *goals, "", f"![]({picture.name})"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    meta = {"command": command, "date": date, "load_before": load_before, "load_after": load_after}
    data = {"meta": meta, "results": results, "failures": failures, "verdicts": goals}
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    plot(results, args, picture)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
