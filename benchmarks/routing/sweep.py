"""Routing policies on 4 simulated vLLM engines in virtual time: capacity, a load sweep over seeds, goodput.

    PYTHONHASHSEED=0 nice -n 10 python -m benchmarks.routing.sweep --jobs 2     # `make bench-routing`

For every workload (rag, chat, chat-shared, random) and KV cache size (the engine profile's own, and a small one):
1. capacity: for each policy, the highest request rate at which it still answers 90 % of the requests within the
   TTFT SLO (p90 TTFT <= SLO), by doubling then bisecting the rate (seed 0);
2. the load sweep: every policy at 0.3, 0.5, 0.7, 0.9 and 1.0 of the best policy's capacity, over --seeds seeds
   (each seed: its own trace, and the pickers' own draws); reported as the median over seeds and the range;
3. goodput: requests that met the TTFT SLO per second of the measured window, at every load (saturation: the
   capacities of step 1, and goodput at load 1.0).

The run is in virtual time (benchmarks/routing/vt_fleet.py, no HTTP, no wall clock), so what else runs on the
machine does not change a number, and the same command gives the same file bit for bit. The engines use the
simulator's h100-llama-8b profile, whose constants are estimates from published numbers, not calibrated on a GPU:
every number here is a model estimate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.routing.vt_fleet import Fleet, Outcome, VirtualClock
from benchmarks.routing.vt_router import FleetRouter
from benchmarks.routing.workloads import CLOSED_LOOP, WORKLOADS, build, session_lifetime_s
from llmserve.workers.sim.profiles import get_profile

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
POLICIES = (
    "round-robin", "least-request", "sticky-sessions", "prefix-chars", "llm-d-style",
    "token-aware-capped", "token-aware",
)  # fmt: skip
OURS = "token-aware"
LOADS = (0.3, 0.5, 0.7, 0.9, 1.0)
CAPACITY_ONLY = ("token-aware-capped",)  # our previous default: its capacity is shown, it is not swept
GOAL_LOADS = (0.5, 0.7, 0.9)
SLO_QUANTILE = 0.9


@dataclass(frozen=True)
class RunSpec:
    workload: str
    policy: str
    kv_blocks: int
    rate: float
    seed: int
    warm_requests: int
    measured_requests: int
    profile: str
    replicas: int
    slo_s: float


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    requests: int
    mean_ttft_s: float
    p50_ttft_s: float
    p90_ttft_s: float
    p99_ttft_s: float
    slo_met: float  # fraction of measured requests with TTFT <= SLO
    goodput: float  # requests meeting the SLO per second of the window
    hit_rate: float  # cached prompt tokens / prompt tokens
    cut: int  # measured requests without a first token when the run stopped (their TTFT counts as a lower bound)
    window_s: float


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_one(spec: RunSpec) -> RunResult:
    return asyncio.run(_run(spec))


async def _run(spec: RunSpec) -> RunResult:
    start = session_lifetime_s() if spec.workload in CLOSED_LOOP else spec.warm_requests / spec.rate
    duration = start + spec.measured_requests / spec.rate
    horizon = duration + max(60.0, 20 * spec.slo_s)
    clock = VirtualClock()
    router = FleetRouter(
        spec.policy,
        spec.replicas,
        seed=spec.seed,
        clock=clock.now,
        profiles_dir=REPO / "configs" / "routing",
        extra_profiles=REPO / "benchmarks" / "routing" / "profiles",
    )
    profile = get_profile(spec.profile).with_overrides(num_blocks=spec.kv_blocks)
    fleet = Fleet(router, profile, spec.replicas, clock, measure_until_s=duration, horizon_s=horizon)
    outcomes = await fleet.run(build(spec.workload, spec.seed, duration_s=duration, rate=spec.rate))
    return summarise(spec, outcomes, start, duration, clock.time)


def summarise(spec: RunSpec, outcomes: Iterable[Outcome], start: float, end: float, stopped: float) -> RunResult:
    window = [o for o in outcomes if start <= o.sent <= end]
    ttfts = sorted(o.ttft if o.ttft is not None else stopped - o.sent for o in window)
    if not ttfts:
        raise SystemExit(f"{spec}: no request in the measured window")
    met = sum(1 for t in ttfts if t <= spec.slo_s)
    prompt = sum(o.prompt_tokens for o in window)
    return RunResult(
        spec=spec,
        requests=len(window),
        mean_ttft_s=statistics.fmean(ttfts),
        p50_ttft_s=_quantile(ttfts, 0.5),
        p90_ttft_s=_quantile(ttfts, 0.9),
        p99_ttft_s=_quantile(ttfts, 0.99),
        slo_met=met / len(ttfts),
        goodput=met / (end - start),
        hit_rate=sum(o.cached_tokens for o in window) / prompt if prompt else 0.0,
        cut=sum(1 for o in window if o.ttft is None),
        window_s=end - start,
    )


# ---- running many ------------------------------------------------------------------------------------------


class Runner:
    """Runs specs in worker processes; results cached per spec for the life of the sweep."""

    def __init__(self, jobs: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else None
        self.done: dict[RunSpec, RunResult] = {}

    def run(self, specs: list[RunSpec]) -> list[RunResult]:
        todo = [s for s in dict.fromkeys(specs) if s not in self.done]
        results = self.pool.map(run_one, todo) if self.pool else map(run_one, todo)
        for spec, result in zip(todo, results, strict=True):
            self.done[spec] = result
            print(
                f"[routing] {spec.workload:<11} kv={spec.kv_blocks:<6} {spec.policy:<15} rate={spec.rate:7.1f} "
                f"seed={spec.seed} mean {result.mean_ttft_s * 1000:9.1f} ms p90 {result.p90_ttft_s * 1000:9.1f} ms "
                f"slo {result.slo_met:6.1%} hit {result.hit_rate:5.1%}",
                flush=True,
            )
        return [self.done[s] for s in specs]


def capacity(runner: Runner, base: RunSpec, policies: Iterable[str], start_rate: float, steps: int) -> dict[str, float]:
    """Per policy: the highest rate with p90 TTFT <= SLO, searched for every policy side by side (one batch of
    runs per step): from `start_rate`, doubling while it holds (or halving while it does not), then `steps`
    bisections in log space between the last rate that held and the first that did not."""
    names = list(policies)
    low: dict[str, float | None] = dict.fromkeys(names)
    high: dict[str, float | None] = dict.fromkeys(names)
    rate = dict.fromkeys(names, start_rate)
    while any(low[p] is None or high[p] is None for p in names):
        probing = [p for p in names if low[p] is None or high[p] is None]
        results = runner.run([_with(base, policy=p, rate=round(rate[p], 3)) for p in probing])
        for p, result in zip(probing, results, strict=True):
            if result.slo_met >= SLO_QUANTILE:
                low[p] = rate[p]
                rate[p] *= 2
            else:
                high[p] = rate[p]
                rate[p] /= 2
            if not start_rate / 2**8 <= rate[p] <= start_rate * 2**8:
                raise SystemExit(f"{base.workload}/{p}: no capacity within {start_rate:g} x 2**+-8 req/s")
    bounds = {p: (float(low[p] or 0), float(high[p] or 0)) for p in names}
    for _ in range(steps):
        mids = {p: round(math.sqrt(lo * hi), 3) for p, (lo, hi) in bounds.items()}
        results = runner.run([_with(base, policy=p, rate=mids[p]) for p in names])
        for p, result in zip(names, results, strict=True):
            lo, hi = bounds[p]
            bounds[p] = (mids[p], hi) if result.slo_met >= SLO_QUANTILE else (lo, mids[p])
    return {p: round(bounds[p][0], 3) for p in names}


def _with(spec: RunSpec, **changes: Any) -> RunSpec:
    return RunSpec(**{**asdict(spec), **changes})


# ---- the sweep ---------------------------------------------------------------------------------------------


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    runner = Runner(args.jobs)
    profile = get_profile(args.profile)
    kv_sizes = [profile.num_blocks, args.small_kv_blocks]
    cells = []
    try:
        for workload in args.workloads.split(","):
            for kv in kv_sizes:
                base = RunSpec(
                    workload=workload, policy=OURS, kv_blocks=kv, rate=1.0, seed=0,
                    warm_requests=args.capacity_warm, measured_requests=args.capacity_requests,
                    profile=args.profile, replicas=args.replicas, slo_s=args.slo_ms / 1000,
                )  # fmt: skip
                policies = args.policies.split(",")
                capacities = capacity(runner, base, policies, args.start_rate, args.bisect_steps)
                best = max(capacities, key=lambda p: capacities[p])
                plan = [
                    (load, _with(base, policy=p, rate=round(capacities[best] * load, 3), seed=seed,
                                 warm_requests=args.warm_requests, measured_requests=args.measured_requests))
                    for load in LOADS for p in policies if p not in CAPACITY_ONLY for seed in range(args.seeds)
                ]  # fmt: skip
                results = runner.run([spec for _, spec in plan])
                points = [
                    {"load": load, "policy": spec.policy, "seed": spec.seed, **_point(result)}
                    for (load, spec), result in zip(plan, results, strict=True)
                ]
                cells.append(
                    {"workload": workload, "kv_blocks": kv, "capacity": capacities, "best": best, "points": points}
                )
    finally:
        if runner.pool is not None:
            runner.pool.shutdown()
    return {"cells": cells}


def _point(result: RunResult) -> dict[str, float]:
    data = asdict(result)
    data.pop("spec")
    data["rate"] = result.spec.rate
    return data


# ---- the report --------------------------------------------------------------------------------------------


def command_line(args: argparse.Namespace) -> str:
    flags = [
        f"--workloads {args.workloads}", f"--policies {args.policies}", f"--seeds {args.seeds}",
        f"--profile {args.profile}", f"--small-kv-blocks {args.small_kv_blocks}", f"--replicas {args.replicas}",
        f"--slo-ms {args.slo_ms:g}", f"--warm-requests {args.warm_requests}",
        f"--measured-requests {args.measured_requests}", f"--capacity-warm {args.capacity_warm}",
        f"--capacity-requests {args.capacity_requests}", f"--start-rate {args.start_rate:g}",
        f"--bisect-steps {args.bisect_steps}",
    ]  # fmt: skip
    return "PYTHONHASHSEED=0 python -m benchmarks.routing.sweep " + " ".join(flags)


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO).stdout.strip()  # fmt: skip
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--profile", default="h100-llama-8b", help="the simulator's engine profile")
    parser.add_argument("--small-kv-blocks", type=int, default=2048, help="the small KV cache, in blocks per engine")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slo-ms", type=float, default=500.0, help="the TTFT SLO")
    parser.add_argument("--warm-requests", type=int, default=150, help="requests before the measured window")
    parser.add_argument("--measured-requests", type=int, default=400, help="requests in the measured window")
    parser.add_argument("--capacity-warm", type=int, default=100)
    parser.add_argument("--capacity-requests", type=int, default=300)
    parser.add_argument("--start-rate", type=float, default=20.0, help="requests/s where the capacity search starts")
    parser.add_argument("--bisect-steps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (the numbers do not depend on it)")
    parser.add_argument("--out", type=Path, default=RESULTS / "routing_virtual.md")
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"  # worker processes and a re-exec inherit it
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.routing.sweep", *(argv or sys.argv[1:])])
    load_before = os.getloadavg()
    commit = git_head()
    started = datetime.datetime.now(datetime.UTC)
    data = sweep(args)
    data["meta"] = {
        "command": command_line(args),
        "machine": machine(),
        "date": started.isoformat(timespec="minutes"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
        "profile": args.profile,
        "profile_num_blocks": get_profile(args.profile).num_blocks,
        "small_kv_blocks": args.small_kv_blocks,
        "replicas": args.replicas,
        "slo_ms": args.slo_ms,
        "seeds": args.seeds,
        "loads": list(LOADS),
        "warm_requests": args.warm_requests,
        "measured_requests": args.measured_requests,
        "capacity_requests": args.capacity_requests,
    }
    json_path = args.out.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    from benchmarks.routing.vt_report import write_report

    write_report(data, args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
