"""The virtual-time routing sweep's result file and plots, written from the sweep's data (never by hand).

python -m benchmarks.routing.vt_report benchmarks/results/routing_virtual.json   # rewrite .md and .png only
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OURS = "token-aware"
OURS_BEFORE = "token-aware-capped"  # our previous default: shown, never counted as a peer
BASELINES = ("round-robin", "least-request")  # not peers: what every router does
GOAL_LOADS = (0.5, 0.7, 0.9)
GOAL_WORKLOADS = ("rag", "chat", "chat-shared")


def _series(cell: dict[str, Any], policy: str, load: float, key: str) -> list[float]:
    return [p[key] for p in cell["points"] if p["policy"] == policy and p["load"] == load]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _policies(cell: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(p["policy"] for p in cell["points"]))


def _loads(cell: dict[str, Any]) -> list[float]:
    return sorted({p["load"] for p in cell["points"]})


def _kv_label(meta: dict[str, Any], kv: int) -> str:
    own = "the profile's own" if kv == meta["profile_num_blocks"] else "small"
    return f"{kv} blocks ({own})"


def best_peer(cell: dict[str, Any], load: float, key: str = "mean_ttft_s", lower: bool = True) -> str:
    """The peer (any policy but ours) with the best median of `key` at `load`."""
    peers = [p for p in _policies(cell) if p not in (OURS, OURS_BEFORE)]
    medians = {p: _median(_series(cell, p, load, key)) for p in peers}
    return min(peers, key=lambda p: medians[p]) if lower else max(peers, key=lambda p: medians[p])


def _ratio_range(cell: dict[str, Any], peer: str, load: float, key: str, ours_over: bool) -> tuple[float, float, float]:
    """Median of per-seed ratios (peer / ours for latencies, ours / peer for goodput) and their min and max."""
    ours = {p["seed"]: p[key] for p in cell["points"] if p["policy"] == OURS and p["load"] == load}
    theirs = {p["seed"]: p[key] for p in cell["points"] if p["policy"] == peer and p["load"] == load}
    ratios = []
    for seed, value in ours.items():
        other = theirs.get(seed)
        if other is None:
            continue
        num, den = (value, other) if ours_over else (other, value)
        ratios.append(num / den if den > 0 else float("inf"))
    if not ratios:
        return float("nan"), float("nan"), float("nan")
    return _median(ratios), min(ratios), max(ratios)


def _fmt_ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{_median(values) * 1000:.1f} [{min(values) * 1000:.1f}-{max(values) * 1000:.1f}]"


def _fmt_rate(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{_median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def headline(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload and KV size, at each goal load: token-aware's mean TTFT and goodput against the best peer."""
    rows = []
    for cell in data["cells"]:
        for load in _loads(cell):
            peer = best_peer(cell, load)
            ttft = _ratio_range(cell, peer, load, "mean_ttft_s", ours_over=False)
            gpeer = best_peer(cell, load, "goodput", lower=False)
            good = _ratio_range(cell, gpeer, load, "goodput", ours_over=True)
            lr = _ratio_range(cell, "least-request", load, "mean_ttft_s", ours_over=True)
            rows.append(
                {"workload": cell["workload"], "kv_blocks": cell["kv_blocks"], "load": load, "peer": peer,
                 "ttft_ratio": ttft, "goodput_peer": gpeer, "goodput_ratio": good, "vs_least_request": lr}
            )  # fmt: skip
    return rows


def write_report(data: dict[str, Any], out: Path) -> None:
    meta = data["meta"]
    slo = meta["slo_ms"]
    lines = [
        f"# Routing policies on {meta['replicas']} simulated vLLM engines in virtual time: load sweep, seeds, goodput",
        "",
        f"- command: `{meta['command']}` (`make bench-routing`)",
        f"- date: {meta['date']} UTC; commit {meta['commit']}",
        f"- machine: {meta['machine']}; load average (1, 5, 15 min) before {meta['load_average_before']}, after "
        f"{meta['load_average_after']}. The run is in virtual time: the load on the machine changes how long it "
        "takes, not a number in this file (the same command gives the same numbers and plots; only this line and the "
        "date differ).",
        f"- engines: {meta['replicas']} x the simulator's engine (`llmserve/workers/sim/engine.py`), profile "
        f"`{meta['profile']}`. **Model estimate**: that profile's latency constants come from published vLLM and "
        "SGLang numbers, not from a calibration on a GPU (`llmserve/workers/sim/profiles.py`; the calibrated profile "
        "is `cpu-smollm2`, `sim_calibration_holdout.md`). Ratios between policies depend far less on the constants "
        "than absolute latencies do, but they are not measurements of a GPU.",
        "- routing: the real `gateway.routing` scheduler and profiles (`benchmarks/routing/vt_router.py`), signals "
        "read every 0.5 s as the gateway's scraper does; the gateway hashes prompt text and estimates tokens as it "
        "does in production (no tokenizer), the engines tokenize with the simulator's word tokenizer. Every random "
        "choice is seeded: the trace (`benchmarks/routing/workloads.py`, seed s) and the pickers "
        "(`load_profiles(seed=s)`).",
        "- policies: `round-robin`, `least-request` (built in); `sticky-sessions` (session affinity on "
        "`x-session-id`, `configs/routing/sticky-sessions.yaml`); `prefix-chars` (our port of vLLM "
        "production-stack's prefix-aware routing, seeded); `llm-d-style` (our re-implementation of llm-d's "
        "inference-scheduling profile: prefix-cache 3, queue 2, kv-cache 2, max-score, weights from llm-d/llm-d "
        "`guides/inference-scheduling/scheduler/inference-scheduling.values.yaml`; `configs/routing/llm-d-style.yaml`)"
        "; `token-aware` (ours, the default); `token-aware-capped` (our previous default, with the load-cap filter "
        "it dropped in this change: `benchmarks/routing/profiles/`; not a peer, and only its capacity is measured). "
        "The real peer routers "
        "(vllm-router, sglang-router) run over HTTP in "
        "`benchmarks/routing/peers.py`, not here.",
        f"- TTFT SLO {slo:g} ms. **Capacity** of a policy: the highest request rate at which >= 90 % of requests get "
        "their first token within the SLO (doubling, then bisections in log space, seed 0, "
        f"{meta.get('capacity_requests', 600)} measured requests). **Load** = offered rate / the best policy's "
        f"capacity. **Goodput** = requests meeting the SLO per second. Each run: {meta['warm_requests']} requests "
        f"of warm-up, then {meta['measured_requests']} measured (TTFT at the client from send to first token; a "
        "request still without a token when the run stops counts with its wait so far, a lower bound). "
        f"{meta['seeds']} seeds per point: **median [min-max] over seeds**.",
        "- chat: sessions of 6 turns, 1 s think time, arriving as a Poisson process; the warm-up is one session "
        "lifetime (12 s) instead of a request count, so the measured window sees every turn in its steady-state "
        "share. Sessions are closed loops: past capacity they slow down, so their offered rate is an upper bound "
        "of what they send.",
        "",
        "## Capacity (requests/s at p90 TTFT <= SLO)",
        "",
    ]
    policies = list(data["cells"][0]["capacity"])
    lines += ["| workload | KV cache | " + " | ".join(policies) + " |", "| --- | --- |" + " ---: |" * len(policies)]
    for cell in data["cells"]:
        caps = cell["capacity"]
        values = " | ".join(f"**{caps[p]:.1f}**" if p == cell["best"] else f"{caps[p]:.1f}" for p in policies)
        lines.append(f"| {cell['workload']} | {_kv_label(meta, cell['kv_blocks'])} | {values} |")
    rows = headline(data)
    lines += [
        "",
        "## Token-aware against the best peer",
        "",
        "Best peer = the policy other than token-aware (and token-aware-capped) with the lowest median mean TTFT "
        "at that load (for goodput: "
        "the highest median goodput). Ratios are per seed (same trace, same seed), median [min-max]: mean TTFT "
        "peer / token-aware (> 1: token-aware faster), goodput token-aware / peer (> 1: token-aware serves more "
        "within the SLO). A peer past its own capacity has a queue that grows for the whole run: its mean TTFT (and "
        "so the ratio) then grows with the run's length, and goodput is the number to read.",
        "",
        "| workload | KV cache | load | best peer (TTFT) | mean TTFT peer / ours | best peer (goodput) "
        "| goodput ours / peer | mean TTFT ours / least-request |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for row in rows:
        t, g, lr = row["ttft_ratio"], row["goodput_ratio"], row["vs_least_request"]
        lines.append(
            f"| {row['workload']} | {_kv_label(meta, row['kv_blocks'])} | {row['load']:g} | {row['peer']} | "
            f"{t[0]:.2f}x [{t[1]:.2f}-{t[2]:.2f}] | {row['goodput_peer']} | {g[0]:.2f}x [{g[1]:.2f}-{g[2]:.2f}] | "
            f"{lr[0]:.2f}x [{lr[1]:.2f}-{lr[2]:.2f}] |"
        )
    lines += ["", "## Goals (issue 14)", ""]
    lines += goal_lines(data, rows)
    for cell in data["cells"]:
        lines += [
            "",
            f"## {cell['workload']}, KV cache {_kv_label(meta, cell['kv_blocks'])}",
            "",
            f"Best capacity: {cell['best']}, {cell['capacity'][cell['best']]:.1f} req/s. Plot: "
            f"`{plot_name(out, cell).name}`.",
            "",
            "| load | rate req/s | policy | mean TTFT ms | p99 TTFT ms | goodput req/s | SLO met | prefix hit rate |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for load in _loads(cell):
            for policy in _policies(cell):
                points = [p for p in cell["points"] if p["policy"] == policy and p["load"] == load]
                if not points:
                    continue
                cut = sum(p["cut"] for p in points)
                lines.append(
                    f"| {load:g} | {points[0]['rate']:.1f} | {policy} | "
                    f"{_fmt_ms([p['mean_ttft_s'] for p in points])}{f' (cut: {cut})' if cut else ''} | "
                    f"{_fmt_ms([p['p99_ttft_s'] for p in points])} | {_fmt_rate([p['goodput'] for p in points])} | "
                    f"{_median([p['slo_met'] for p in points]):.1%} | {_median([p['hit_rate'] for p in points]):.1%} |"
                )
    out.write_text("\n".join(lines) + "\n")
    for cell in data["cells"]:
        plot_cell(meta, cell, plot_name(out, cell))


def goal_lines(data: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for workload in GOAL_WORKLOADS:
        for kv in sorted({r["kv_blocks"] for r in rows if r["workload"] == workload}):
            chosen = [r for r in rows if r["workload"] == workload and r["kv_blocks"] == kv and r["load"] in GOAL_LOADS]
            if not chosen:
                continue
            ttft = _median([r["ttft_ratio"][0] for r in chosen])
            good = _median([r["goodput_ratio"][0] for r in chosen])
            lines.append(
                f"- {workload}, KV {kv}: mean TTFT {ttft:.2f}x lower than the best peer (goal >= 1.3x: "
                f"{'met' if ttft >= 1.3 else 'MISSED'}); goodput {good:.2f}x the best peer's (goal >= 1.2x: "
                f"{'met' if good >= 1.2 else 'MISSED'}) - medians over loads {', '.join(f'{x:g}' for x in GOAL_LOADS)}"
            )
    for kv in sorted({r["kv_blocks"] for r in rows if r["workload"] == "random"}):
        chosen = [r for r in rows if r["workload"] == "random" and r["kv_blocks"] == kv and r["load"] <= 1.0]
        if chosen:
            worst = max(r["vs_least_request"][0] for r in chosen)
            lines.append(
                f"- random (no sharing), KV {kv}: mean TTFT at most {worst:.2f}x least-request's over loads 0.3-1.0 "
                f"(goal <= 1.05x: {'met' if worst <= 1.05 else 'MISSED'})"
            )
    return lines


def plot_name(out: Path, cell: dict[str, Any]) -> Path:
    return out.with_name(f"{out.stem}_{cell['workload']}_kv{cell['kv_blocks']}.png")


def plot_cell(meta: dict[str, Any], cell: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = _loads(cell)
    fig, (ttft_ax, good_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy in _policies(cell):
        for ax, key, scale in ((ttft_ax, "mean_ttft_s", 1000.0), (good_ax, "goodput", 1.0)):
            values = [[v * scale for v in _series(cell, policy, load, key)] for load in loads]
            mid = [_median(v) for v in values]
            style = {"linewidth": 2.4, "zorder": 3} if policy == OURS else {"linewidth": 1.3}
            (line,) = ax.plot(loads, mid, marker="o", markersize=3, label=policy, **style)
            ax.fill_between(loads, [min(v) for v in values], [max(v) for v in values], alpha=0.18,
                            color=line.get_color())  # fmt: skip
    ttft_ax.set_yscale("log")
    ttft_ax.set_ylabel("mean TTFT, ms (log)")
    good_ax.set_ylabel(f"goodput, req/s with TTFT <= {meta['slo_ms']:g} ms")
    for ax in (ttft_ax, good_ax):
        ax.set_xlabel(f"load (fraction of {cell['best']}'s capacity, {cell['capacity'][cell['best']]:.0f} req/s)")
        ax.axvline(1.0, color="grey", linewidth=0.6, linestyle=":")
        ax.grid(alpha=0.3)
    good_ax.legend(fontsize=8)
    fig.suptitle(
        f"{cell['workload']}, KV {_kv_label(meta, cell['kv_blocks'])}, {meta['replicas']} engines ({meta['profile']}, "
        f"model estimate); median and range of {meta['seeds']} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    write_report(json.loads(source.read_text()), source.with_suffix(".md"))
