"""Soak: concurrent SSE streams through `llmserve up` for minutes while simulated workers are killed and come back.

    python benchmarks/soak/run.py --duration 600 --streams 100          (make soak; run it alone on the machine)
    python benchmarks/soak/run.py --duration 60 --out benchmarks/results/soak_smoke.md     (a smoke run)

`llmserve up` serves one vllm-sim service (the vLLM-contract simulator, cpu-smollm2 profile) on --replicas replicas.
--streams client loops each send one streamed chat after another (--max-tokens tokens each, `ignore_eos`), every
request with its own x-request-id. A killer SIGKILLs a random replica's process group (the worker and its keeper: a
crash) every --kill-every seconds on average (seeded; only while every replica is ready, so kill windows never
overlap); the controller notices and starts it again. A kill window runs from the kill to the moment the replica is
ready again.

What it checks, per request id: exactly one terminal event — `[DONE]` after the tokens, or one error frame (then the
`[DONE]` that closes it), or an error response — never none (lost) and never two (duplicated); success (every token,
`[DONE]`) for at least 99.9 % of the requests that overlap no kill window; and the `llmserve up` process's RSS (the
gateway and the controller share it) at the start, the end and its peak, sampled every 10 s.

The result (markdown + JSON beside it) starts with its exact command, the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = REPO / "benchmarks" / ".work" / "soak"
RESULTS = REPO / "benchmarks" / "results"
SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    minReplicas: {replicas}
    maxReplicas: {replicas}
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2", "--speed", "{speed}"]
"""


@dataclass
class Outcome:
    """One request, as its client saw it."""

    request_id: str
    started: float
    ended: float = 0.0
    status: int = 0
    tokens: int = 0
    done: int = 0  # `[DONE]` events
    error_frames: int = 0
    after_terminal: int = 0  # events after the terminal one (beyond the [DONE] closing an error frame)
    transport: str | None = None  # a connection that broke without any answer

    @property
    def terminal_events(self) -> int:
        if self.status != 200:
            return 1 if self.status else 0  # an error response is its own terminal event
        if self.error_frames:
            return self.error_frames + max(0, self.done - 1)  # the [DONE] after an error frame closes it
        return self.done

    def succeeded(self, max_tokens: int) -> bool:
        return self.status == 200 and self.done == 1 and not self.error_frames and self.tokens == max_tokens


@dataclass
class Kill:
    replica: str
    at: float
    recovered: float | None = None


@dataclass
class Soak:
    args: argparse.Namespace
    url: str = ""
    control: str = ""
    token: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)
    began: float = 0.0

    # -- the clients --------------------------------------------------------------------------------------------
    async def client(self, index: int, until: float, http: httpx.AsyncClient) -> None:
        body = {"model": "sim", "messages": [{"role": "user", "content": f"soak client {index}: tell me a story"}],
                "stream": True, "max_tokens": self.args.max_tokens, "ignore_eos": True}  # fmt: skip
        n = 0
        while time.monotonic() < until:
            n += 1
            outcome = Outcome(f"soak-{index}-{n}", time.monotonic())
            self.outcomes.append(outcome)
            await self.stream(http, body, outcome)
            outcome.ended = time.monotonic()
            if outcome.status != 200:
                await asyncio.sleep(0.2)  # the client's own pacing after a refusal

    async def stream(self, http: httpx.AsyncClient, body: dict[str, Any], outcome: Outcome) -> None:
        headers = {"x-request-id": outcome.request_id}
        try:
            async with http.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=headers) as response:
                outcome.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    return
                terminal = False
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        outcome.done += 1
                        if terminal and not (outcome.error_frames and outcome.done == 1):
                            outcome.after_terminal += 1
                        terminal = True
                    elif data.startswith('{"error"'):
                        outcome.error_frames += 1
                        if terminal:
                            outcome.after_terminal += 1
                        terminal = True
                    elif terminal:
                        outcome.after_terminal += 1
                    elif '"delta":{"content":' in data:
                        outcome.tokens += 1
        except httpx.HTTPError as exc:
            outcome.transport = f"{type(exc).__name__}: {exc}"

    # -- the killer ---------------------------------------------------------------------------------------------
    async def status(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        auth = {"authorization": f"Bearer {self.token}"}
        response = await http.get(f"{self.control}/control/v1/status", headers=auth)
        response.raise_for_status()
        service = next(s for s in response.json()["services"] if s["name"] == "sim")
        return list(service["replicas"])

    async def killer(self, until: float, http: httpx.AsyncClient, rng: random.Random) -> None:
        while True:
            wait = rng.uniform(0.5, 1.5) * self.args.kill_every
            if time.monotonic() + wait >= until - 5:
                return
            await asyncio.sleep(wait)
            replicas = await self.status(http)
            while not (len(replicas) == self.args.replicas and all(r["state"] == "ready" for r in replicas)):
                await asyncio.sleep(0.2)  # the previous one is not back yet
                replicas = await self.status(http)
            victim = rng.choice(sorted(replicas, key=lambda r: r["id"]))
            kill = Kill(victim["id"], time.monotonic())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(victim["pid"]), signal.SIGKILL)
            self.kills.append(kill)
            print(f"  {kill.at - self.began:6.1f} s: killed {victim['id']} (pid {victim['pid']})", flush=True)
            while kill.recovered is None:
                await asyncio.sleep(0.1)
                again = next((r for r in await self.status(http) if r["id"] == victim["id"]), None)
                if again is not None and again["state"] == "ready" and again["pid"] != victim["pid"]:
                    kill.recovered = time.monotonic()
            print(f"  {kill.recovered - self.began:6.1f} s: {victim['id']} ready again", flush=True)

    async def sample_rss(self, pid: int, until: float) -> None:
        while time.monotonic() < until:
            self.rss.append((time.monotonic() - self.began, rss_kib(pid)))
            await asyncio.sleep(10)
        self.rss.append((time.monotonic() - self.began, rss_kib(pid)))

    async def run(self, pid: int) -> None:
        rng = random.Random(self.args.seed)
        limits = httpx.Limits(max_connections=self.args.streams + 20, max_keepalive_connections=self.args.streams + 20)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10), limits=limits) as http:
            self.began = time.monotonic()
            until = self.began + self.args.duration
            tasks = [asyncio.ensure_future(self.client(i, until, http)) for i in range(self.args.streams)]
            tasks.append(asyncio.ensure_future(self.killer(until, http, rng)))
            tasks.append(asyncio.ensure_future(self.sample_rss(pid, until)))
            await asyncio.gather(*tasks)

    # -- the verdict ------------------------------------------------------------------------------------------
    def in_a_window(self, outcome: Outcome) -> bool:
        return any(outcome.started <= (k.recovered or float("inf")) and outcome.ended >= k.at for k in self.kills)

    def summary(self) -> dict[str, Any]:
        outcomes = [o for o in self.outcomes if o.ended]
        outside = [o for o in outcomes if not self.in_a_window(o)]
        inside = [o for o in outcomes if self.in_a_window(o)]
        ok_outside = sum(o.succeeded(self.args.max_tokens) for o in outside)
        recoveries = [k.recovered - k.at for k in self.kills if k.recovered is not None]
        statuses: dict[str, int] = {}
        for o in outcomes:
            statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
        return {
            "requests": len(outcomes),
            "ids_unique": len({o.request_id for o in outcomes}) == len(outcomes),
            "lost": sum(o.terminal_events == 0 for o in outcomes),
            "duplicated": sum(o.terminal_events > 1 or o.after_terminal > 0 for o in outcomes),
            "transport_errors": sum(o.transport is not None for o in outcomes),
            "statuses": statuses,
            "succeeded": sum(o.succeeded(self.args.max_tokens) for o in outcomes),
            "error_frames": sum(o.error_frames > 0 for o in outcomes),
            "outside_windows": len(outside),
            "succeeded_outside_windows": ok_outside,
            "success_outside_windows": ok_outside / len(outside) if outside else float("nan"),
            "inside_windows": len(inside),
            "failed_inside_windows": sum(not o.succeeded(self.args.max_tokens) for o in inside),
            "kills": len(self.kills),
            "recovery_s": recoveries,
            "rss_kib": self.rss,
            "examples": [asdict(o) for o in outcomes if o.terminal_events != 1 or o.after_terminal][:10],
        }


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_up(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    config = work / "soak.yaml"
    config.write_text(SERVICE.format(replicas=args.replicas, speed=args.speed, model_dir=model_dir))
    port, control_port = free_port(), free_port()
    state = work / "state"
    cmd = [sys.executable, "-m", "llmserve", "--log-level", "warning", "up", "-f", str(config), "--port", str(port),
           "--grpc-port", "0", "--control-port", str(control_port), "--state-dir", str(state),
           "--log-dir", str(work / "logs")]  # fmt: skip
    log = open(work / "llmserve.log", "wb")  # noqa: SIM115 - it lives as long as the process
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    url, control = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control_port}"
    deadline = time.monotonic() + 120
    token = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llmserve up exited ({process.returncode}); see {work / 'llmserve.log'}")
        with contextlib.suppress(httpx.HTTPError, OSError, StopIteration):
            token = (state / "control-token").read_text().strip()
            status = httpx.get(f"{control}/control/v1/status", headers={"authorization": f"Bearer {token}"}).json()
            service = next(s for s in status["services"] if s["name"] == "sim")
            if service["ready_replicas"] == args.replicas and httpx.get(f"{url}/ready").status_code == 200:
                return process, url, control, token
        time.sleep(0.5)
    raise SystemExit(f"the replicas were not ready within 120 s; see {work / 'llmserve.log'}")


def stop_up(process: subprocess.Popen[bytes]) -> int | None:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def report(soak: Soak, summary: dict[str, Any], command: str, exit_code: int | None) -> list[str]:
    args = soak.args
    load = os.getloadavg()
    rss = summary["rss_kib"]
    rate = summary["success_outside_windows"]
    recoveries = summary["recovery_s"]
    warm = next((kib for at, kib in rss if at >= 60), rss[-1][1] if rss else 0)  # warmed up: caches, pools, buffers
    goals = [
        ("every request id got exactly one terminal event: 0 lost", summary["lost"] == 0),
        ("0 duplicated", summary["duplicated"] == 0),
        ("success >= 99.9 % outside the kill windows", rate >= 0.999),
    ]
    lines = [
        "# Soak: SSE streams through `llmserve up` while simulated workers are killed and restarted",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (the clients, the gateway, the "
        "controller and the simulated workers share the cores)",
        f"- command: `{command}`",
        f"- {args.streams} concurrent streams for {args.duration:g} s, {args.max_tokens} tokens each; {args.replicas} "
        f"replicas of vllm-sim (cpu-smollm2 at {args.speed:g}x speed); a replica killed (SIGKILL to its process group) "
        f"every ~{args.kill_every:g} s (seed {args.seed})",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| requests | {summary['requests']} (ids unique: {summary['ids_unique']}) |",
        f"| lost (no terminal event) | {summary['lost']} |",
        f"| duplicated (more than one terminal event, or events after it) | {summary['duplicated']} |",
        f"| succeeded (every token, then [DONE]) | {summary['succeeded']} |",
        f"| ended by an error frame | {summary['error_frames']} |",
        f"| answered with an error status | {sum(v for k, v in summary['statuses'].items() if k != '200')} "
        f"({summary['statuses']}) |",
        f"| transport errors seen by clients | {summary['transport_errors']} |",
        f"| outside the kill windows: succeeded | {summary['succeeded_outside_windows']} / "
        f"{summary['outside_windows']} ({100 * rate:.3f} %) |",
        f"| inside a kill window: did not succeed | {summary['failed_inside_windows']} / {summary['inside_windows']} |",
        f"| kills | {summary['kills']}; back to ready after "
        + (f"{min(recoveries):.1f}-{max(recoveries):.1f} s" if recoveries else "-")
        + " |",
        f"| `llmserve up` RSS (gateway + controller) | start {rss[0][1] / 1024:.1f} MiB, after the first minute "
        f"{warm / 1024:.1f} MiB, end {rss[-1][1] / 1024:.1f} MiB, peak {max(r for _, r in rss) / 1024:.1f} MiB |"
        if rss
        else "| RSS | - |",
        f"| exit after SIGTERM | {exit_code} |",
        "",
        *[f"- {'met' if ok else 'MISSED'}: {goal}" for goal, ok in goals],
    ]
    if summary["examples"]:
        lines += ["", "Requests without exactly one terminal event (at most 10):", "", "```"]
        lines += [json.dumps(example) for example in summary["examples"]]
        lines += ["```"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--streams", type=int, default=100, help="concurrent client loops")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per stream")
    parser.add_argument("--speed", type=float, default=1.0, help="the simulator's speed (simulated s per wall s)")
    parser.add_argument("--kill-every", type=float, default=30.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.md")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/soak/run.py", *sys.argv[1:]])
    WORK.mkdir(parents=True, exist_ok=True)
    work = WORK / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work.mkdir()
    process, url, control, token = start_up(args, work)
    soak = Soak(args, url, control, token)
    print(f"soak: {args.streams} streams for {args.duration:g} s through {url} (work dir {work})", flush=True)
    try:
        asyncio.run(soak.run(process.pid))
    finally:
        exit_code = stop_up(process)
    summary = soak.summary()
    lines = report(soak, summary, command, exit_code)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, **summary}, indent=1) + "\n")
    print("\n".join(lines))
    met = summary["lost"] == 0 and summary["duplicated"] == 0 and summary["success_outside_windows"] >= 0.999
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
