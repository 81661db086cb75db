"""Would exact prefix-cache state from the engines beat the index the gateway learns from its own decisions?

    PYTHONHASHSEED=0 nice -n 10 python -m benchmarks.routing.exact_prefix --jobs 2     # `make bench-exact-prefix`

vLLM can publish its KV-cache events (`--kv-events-config`: `BlockStored` / `BlockRemoved` / `AllBlocksCleared`
batches over ZMQ, vllm/distributed/kv_events.py), so a router could know which blocks every engine holds instead
of guessing from what it sent where. Before building that (a subscriber per replica, the engine's exact token ids
and block hashes for every prompt, hence its chat template and tokenizer on the request path), this measures its
upper bound in the virtual-time harness: the `exact` variant of token-aware reads each simulated engine's block
pool at the moment of the decision (no event lag, nothing lost) instead of the learned index; `exact+learned`
takes, per replica, the longer of the two matches (the index also knows what was just sent and is not cached
yet). Everything else is the sweep's (benchmarks/routing/sweep.py): its traces, seeds, SLO and, per cell, its loads
as fractions of the best capacity in benchmarks/results/routing_virtual.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.routing.sweep import REPO, RESULTS, RunResult, RunSpec, git_head, machine, summarise
from benchmarks.routing.vt_fleet import Fleet, VirtualClock
from benchmarks.routing.vt_router import FleetRouter
from benchmarks.routing.workloads import CLOSED_LOOP, build, session_lifetime_s
from gateway.routing.base import Candidate, RouteContext
from gateway.routing.profiles import Profile
from gateway.routing.scorers import PrefixCache
from llmserve.workers.sim.kv_cache import block_hash
from llmserve.workers.sim.profiles import get_profile

VARIANTS = ("learned", "exact", "exact+learned")
CELLS = ("rag:2048", "rag:28000", "chat:2048", "chat:28000")
LOADS = (0.5, 0.7, 0.9)


class ExactPrefix:
    """token-aware's prefix-cache scorer, answered from the engines' block pools (what KV events would say),
    optionally merged with the learned index (`learned`: the longer match per replica)."""

    name = "prefix-cache"

    def __init__(self, fleet: Fleet, learned: PrefixCache | None) -> None:
        self.fleet = fleet
        self.learned = learned

    def score(self, ctx: RouteContext, candidates: list[Candidate]) -> list[float]:
        fleet = self.fleet
        prompt = fleet.prompts.encode(getattr(ctx.request, "messages", []))
        size = fleet.profile.block_size
        hashes: list[int] = []
        parent: int | None = None
        for start in range(0, (len(prompt) - 1) // size * size, size):  # the blocks a hit can cover, as the engine
            parent = block_hash(parent, prompt[start : start + size])
            hashes.append(parent)
        shares = {}
        for candidate in candidates:
            engine = fleet.engines[int(candidate.replica_id.rsplit("-", 1)[1])]
            shares[candidate.replica_id] = len(engine.pool.lookup(hashes)) * size / max(1, len(prompt))
        if self.learned is not None:
            learned = self.learned.score(ctx, candidates)
            for candidate, share in zip(candidates, learned, strict=True):
                shares[candidate.replica_id] = max(shares[candidate.replica_id], share)
        ctx.scratch["prefix-matched-tokens"] = {r: round(s * ctx.prompt_tokens) for r, s in shares.items()}
        return [shares[c.replica_id] for c in candidates]

    def learn(self, ctx: RouteContext, chosen: Candidate) -> None:
        if self.learned is not None:
            self.learned.learn(ctx, chosen)


def _variant(router: FleetRouter, fleet: Fleet, variant: str) -> None:
    """Swap token-aware's prefix-cache scorer for the exact one (in place)."""
    profile: Profile = router.scheduler.profiles["token-aware"]
    scorers = []
    for scorer, weight in profile.scorers:
        if isinstance(scorer, PrefixCache):
            scorer = ExactPrefix(fleet, scorer if variant == "exact+learned" else None)  # type: ignore[assignment]
        scorers.append((scorer, weight))
    profile.scorers = scorers
    profile.learners = [p for p in profile.plugins() if callable(getattr(p, "learn", None))]  # type: ignore[misc]


def run_one(job: tuple[RunSpec, str]) -> RunResult:
    return asyncio.run(_run(*job))


async def _run(spec: RunSpec, variant: str) -> RunResult:
    start = session_lifetime_s() if spec.workload in CLOSED_LOOP else spec.warm_requests / spec.rate
    duration = start + spec.measured_requests / spec.rate
    clock = VirtualClock()
    router = FleetRouter("token-aware", spec.replicas, seed=spec.seed, clock=clock.now,
                         profiles_dir=REPO / "configs" / "routing")  # fmt: skip
    profile = get_profile(spec.profile).with_overrides(num_blocks=spec.kv_blocks)
    fleet = Fleet(router, profile, spec.replicas, clock, measure_until_s=duration,
                  horizon_s=duration + max(60.0, 20 * spec.slo_s))  # fmt: skip
    if variant != "learned":
        _variant(router, fleet, variant)
    outcomes = await fleet.run(build(spec.workload, spec.seed, duration_s=duration, rate=spec.rate))
    return summarise(spec, outcomes, start, duration, clock.time)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="workload:kv_blocks, comma-separated")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sweep", type=Path, default=RESULTS / "routing_virtual.json", help="capacities from")
    parser.add_argument("--out", type=Path, default=RESULTS / "routing_exact_prefix.md")
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.routing.exact_prefix", *(argv or sys.argv[1:])])
    sweep = json.loads(args.sweep.read_text())
    meta = sweep["meta"]
    capacity = {(c["workload"], c["kv_blocks"]): max(c["capacity"].values()) for c in sweep["cells"]}
    base = RunSpec(workload="rag", policy="token-aware", kv_blocks=0, rate=1.0, seed=0,
                   warm_requests=meta["warm_requests"], measured_requests=meta["measured_requests"],
                   profile=meta["profile"], replicas=meta["replicas"], slo_s=meta["slo_ms"] / 1000)  # fmt: skip
    jobs = []
    for cell in args.cells.split(","):
        workload, kv = cell.split(":")
        for load in LOADS:
            rate = round(capacity[(workload, int(kv))] * load, 3)
            for variant in VARIANTS:
                for seed in range(args.seeds):
                    spec = replace(base, workload=workload, kv_blocks=int(kv), rate=rate, seed=seed)
                    jobs.append((cell, load, variant, seed, spec))
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_one, [(spec, variant) for _, _, variant, _, spec in jobs]))
    points = [{"cell": cell, "load": load, "variant": variant, "seed": seed, **_point(result)}
              for (cell, load, variant, seed, _), result in zip(jobs, results, strict=True)]  # fmt: skip
    sweep_path = args.sweep.relative_to(REPO) if args.sweep.is_relative_to(REPO) else args.sweep
    command = (f"PYTHONHASHSEED=0 python -m benchmarks.routing.exact_prefix --cells {args.cells} "
               f"--seeds {args.seeds} --sweep {sweep_path}")  # fmt: skip
    data = {"meta": {"command": command, "machine": machine(), "date": started.isoformat(timespec="minutes"),
                     "commit": git_head(), "load_average_before": [round(x, 2) for x in load_before],
                     "load_average_after": [round(x, 2) for x in os.getloadavg()], "sweep_commit": meta["commit"],
                     "seeds": args.seeds},
            "points": points}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    args.out.write_text("\n".join(report(data)) + "\n")
    print(args.out.read_text())


def _point(result: RunResult) -> dict[str, float]:
    data = asdict(result)
    data.pop("spec")
    data["rate"] = result.spec.rate
    return data


def report(data: dict[str, Any]) -> list[str]:
    meta, points = data["meta"], data["points"]
    lines = [
        "# Exact prefix-cache state (what KV events would give) against the learned index, in virtual time",
        "",
        f"- command: `{meta['command']}` (`make bench-exact-prefix`)",
        f"- date: {meta['date']} UTC; commit {meta['commit']}; loads are fractions of the best capacities of the "
        f"sweep at {meta['sweep_commit']} (`routing_virtual.json`)",
        f"- machine: {meta['machine']}; load average before {meta['load_average_before']}, after "
        f"{meta['load_average_after']} (virtual time: the numbers do not depend on it)",
        "- the sweep's harness, traces, seeds and SLO; token-aware with its prefix-cache scorer answered three ways: "
        "`learned` (the gateway's index, as shipped), `exact` (each engine's block pool read at the moment of the "
        "decision: an upper bound of a KV-event subscriber, with no event lag and no lost events), `exact+learned` "
        "(per replica the longer of the two matches). **Model estimate** (the h100-llama-8b profile).",
        f"- {meta['seeds']} seeds per point: median [min-max] over seeds; ratio = learned's mean TTFT / the variant's "
        "(> 1: the variant is faster), per seed.",
        "",
        "| workload | KV blocks | load | variant | mean TTFT ms | goodput req/s | prefix hit rate | "
        "TTFT learned / variant |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for cell in dict.fromkeys(p["cell"] for p in points):
        workload, kv = cell.split(":")
        for load in sorted({p["load"] for p in points if p["cell"] == cell}):
            learned = {p["seed"]: p["mean_ttft_s"] for p in points
                       if p["cell"] == cell and p["load"] == load and p["variant"] == "learned"}  # fmt: skip
            for variant in VARIANTS:
                rows = [p for p in points if p["cell"] == cell and p["load"] == load and p["variant"] == variant]
                ttft = [p["mean_ttft_s"] * 1000 for p in rows]
                goodput = [p["goodput"] for p in rows]
                hits = [p["hit_rate"] for p in rows]
                ratios = sorted(learned[p["seed"]] / p["mean_ttft_s"] for p in rows if p["mean_ttft_s"] > 0)
                ratio = "" if variant == "learned" else (
                    f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]")  # fmt: skip
                lines.append(
                    f"| {workload} | {kv} | {load:g} | {variant} | {_range(ttft, '{:.1f}')} | "
                    f"{_range(goodput, '{:.1f}')} | {statistics.median(hits):.1%} | {ratio} |"
                )
    return lines


def _range(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


if __name__ == "__main__":
    main()
