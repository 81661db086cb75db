"""The predictive runtime against best-configured peers: the same iris LogisticRegression (joblib) and the same V2
request (one FP32 row) served by llmserve's runtime (adaptive batching on, and off), by that runtime through
llmserve's gateway, by MLServer 1.7.1 + mlserver-sklearn in four configurations (debug off; adaptive batching on
and off; parallel_workers 0 and 1) and by a KServe 0.21 ModelServer with its per-request latency logging off,
loaded with wrk at c=1, 16 and 64.

    python benchmarks/v2_runtime/run.py --rounds 5 --duration 10          # `make bench-v2`

MLServer's adaptive batching (max_batch_size 64 like ours, max_batch_time --mlserver-batch-ms, 1 ms by default:
ours waits 0 ms, MLServer needs a window > 0 to batch) is off by default in MLServer and must be configured per
model, which this does; `debug: false` turns off its per-request access log. Rounds are interleaved (each target
runs each scenario once per round) and medians are reported with the range over rounds; server CPU per request is
the server's process tree CPU time (psutil) over the run (through the gateway: the gateway's and the runtime's
together). Before measuring, every target must answer the request with the right label, and KServe's own REST
client (InferenceRESTClient) is run against llmserve's runtime and against the gateway as a compatibility check.
Peers live in separate venvs under benchmarks/.work/ (MLServer with uvloop 0.21.0: with 0.23 its workers die, see
../shared/NOTES.md; kserve pins protobuf 6, which clashes with the main venv's protobuf 7). Results go to
benchmarks/results/v2_runtime_best.md (+ .json) with this command, the machine and the date. The gateway
(llmserve-gateway: benchmarks/gateway_overhead/serve_gateway.py --protocol v2, no controller) runs in front of the
`llmserve` target's runtime, so `llmserve` must be among the targets with it.
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
BENCH = WORK / "v2_runtime"
SKLEARN = "scikit-learn=={}"
PEERS = {
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"],
    "kserve": ["kserve==0.21.0"],
}
SCENARIOS = [("c=1", 1), ("c=16", 16), ("c=64", 64)]
MLSERVER = {"batch_ms": 1.0}  # MLServer's max_batch_time in ms (--mlserver-batch-ms)
MLSERVERS = ("mlserver-batch-pw0", "mlserver-batch-pw1", "mlserver-nobatch-pw0", "mlserver-nobatch-pw1")
ALL_TARGETS = ",".join(("llmserve", "llmserve-gateway", "llmserve-nobatch", *MLSERVERS, "kserve"))
GATEWAY = "llmserve-gateway"  # the gateway in front of the `llmserve` target's runtime
BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


@dataclass
class Target:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    also: list[subprocess.Popen[bytes]] = field(default_factory=list)  # processes whose CPU counts too


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def peer_python(peer: str) -> Path:
    venv = WORK / f"venv-{peer}"
    python = venv / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import sklearn"], capture_output=True).returncode:
        print(f"[bench] installing {peer} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        packages = [*PEERS[peer], SKLEARN.format(sklearn_version())]  # the same sklearn unpickles the same model
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def train_model() -> Path:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder = BENCH / "iris"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), folder / "model.joblib")
    return folder


def start(cmd: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready in {timeout} s; see {log}")


def start_target(name: str, model_dir: Path, started: list[Target]) -> Target:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = BENCH / f"{name}.log"
    also: list[subprocess.Popen[bytes]] = []
    if name == GATEWAY:
        runtime = next((t for t in started if t.name == "llmserve"), None)
        if runtime is None:
            raise SystemExit(f"{GATEWAY} runs in front of the llmserve target: list llmserve before it")
        cmd = [sys.executable, str(REPO / "benchmarks" / "gateway_overhead" / "serve_gateway.py"), "--port", str(port)]
        cmd += ["--worker", runtime.url, "--model", "iris", "--protocol", "v2"]
        process = start(cmd, log, cwd=REPO)
        also.append(runtime.process)
    elif name in ("llmserve", "llmserve-nobatch"):
        cmd = [sys.executable, "-m", "llmserve.runtimes.server", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--model", f"iris={model_dir}:sklearn", "--log-level", "warning"]
        if name == "llmserve-nobatch":
            cmd += ["--max-batch-size", "1"]
        process = start(cmd, log, cwd=REPO)
    elif name in MLSERVERS:
        batching, workers = name.split("-")[1], int(name.rsplit("pw", 1)[1])
        root = BENCH / name
        (root / "iris").mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / "model.joblib", root / "iris" / "model.joblib")
        model: dict[str, object] = {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
                                    "parameters": {"uri": "./model.joblib"}}  # fmt: skip
        if batching == "batch":
            model |= {"max_batch_size": 64, "max_batch_time": MLSERVER["batch_ms"] / 1000}
        (root / "iris" / "model-settings.json").write_text(json.dumps(model))
        (root / "settings.json").write_text(
            json.dumps({"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                        "metrics_port": free_port(), "debug": False, "parallel_workers": workers})
        )  # fmt: skip
        process = start([str(peer_python("mlserver").parent / "mlserver"), "start", str(root)], log)
    elif name == "kserve":
        python = peer_python("kserve")
        cmd = [str(python), str(HERE / "kserve_iris.py"), "--model_dir", str(model_dir)]
        cmd += [
            "--http_port",
            str(port),
            "--grpc_port",
            str(free_port()),
            "--enable_latency_logging",
            "false",
            "--log_config_file",
            str(HERE / "kserve_logging.json"),
        ]  # no per-request access or timing lines
        process = start(cmd, log)
    else:
        raise SystemExit(f"unknown target {name}")
    wait_ready(url, process, log)
    return Target(name, url, process, also=also)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL what is left after 10 s (MLServer's workers can ignore SIGTERM)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group: children that outlived their parent too


def check_answer(target: Target) -> None:
    response = httpx.post(f"{target.url}/v2/models/iris/infer", json=BODY, timeout=10)
    response.raise_for_status()
    data = response.json()["outputs"][0]["data"]
    if data != [0]:
        raise SystemExit(f"{target.name} answered {data}, expected [0]")


def kserve_client_check(url: str) -> str:
    """KServe's InferenceRESTClient against `url`: its verdict, or why it failed."""
    python = peer_python("kserve")
    done = subprocess.run(
        [str(python), str(HERE / "kserve_client_check.py"), url, "iris"], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return f"FAILED: {(done.stdout + done.stderr).strip().splitlines()[-1]}"
    return done.stdout.strip()


def cpu_seconds(target: Target) -> float:
    total = 0.0
    for process in [target.process, *target.also]:
        proc = psutil.Process(process.pid)
        total += sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
    return total


def run_wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(HERE / "infer.lua")]
    out = subprocess.run([*cmd, f"{url}/v2/models/iris/infer"], capture_output=True, text=True, check=True).stdout
    data: dict[str, float] = json.loads(next(line for line in out.splitlines() if line.startswith("JSON "))[5:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--targets", default=ALL_TARGETS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "v2_runtime_best.md")
    parser.add_argument("--mlserver-batch-ms", type=float, default=1.0, help="MLServer max_batch_time")
    args = parser.parse_args()
    MLSERVER["batch_ms"] = args.mlserver_batch_ms
    load_before = os.getloadavg()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    BENCH.mkdir(parents=True, exist_ok=True)
    model_dir = train_model()
    targets: list[Target] = []
    client_checks: dict[str, str] = {}
    try:
        for name in args.targets.split(","):
            targets.append(start_target(name, model_dir, targets))
        for target in targets:  # a right answer first, then a warm-up
            check_answer(target)
            run_wrk(target.url, 4, 2)
        if "kserve" in args.targets:
            for target in [t for t in targets if t.name in ("llmserve", GATEWAY)]:
                client_checks[target.name] = kserve_client_check(target.url)
                print(f"[bench] {target.name}: {client_checks[target.name]}", flush=True)
        for round_no in range(args.rounds):
            for label, connections in SCENARIOS:
                for target in targets:
                    before = cpu_seconds(target)
                    result = run_wrk(target.url, connections, args.duration)
                    result["cpu_us_per_request"] = (cpu_seconds(target) - before) / max(result["requests"], 1) * 1e6
                    target.results.setdefault(label, []).append(result)
                    print(
                        f"[bench] round {round_no + 1} {label:<5} {target.name:<17} {result['rps']:8.0f} req/s "
                        f"p50 {result['p50_us'] / 1000:6.2f} ms p99 {result['p99_us'] / 1000:6.2f} ms "
                        f"cpu {result['cpu_us_per_request']:6.0f} us/req errors {result['errors']}+{result['non2xx']}",
                        flush=True,
                    )
    finally:
        stop([t.process for t in targets])
    write_report(args, targets, client_checks, load_before)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(target: Target, label: str) -> dict[str, float]:
    runs = target.results.get(label, [])
    return {key: median([r[key] for r in runs]) for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request")} | {
        "errors": sum(r["errors"] + r["non2xx"] for r in runs)
    }


def _range(target: Target, label: str, key: str, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    values = [r[key] * scale for r in target.results.get(label, [])]
    if not values:
        return "-"
    return f"{fmt.format(median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def write_report(
    args: argparse.Namespace, targets: list[Target], client_checks: dict[str, str], load_before: tuple[float, ...]
) -> None:
    checks = "; ".join(f"{name}: {verdict}" for name, verdict in client_checks.items()) or "not run (no kserve)"
    lines = [
        "# V2 runtime: llmserve vs best-configured MLServer and KServe (iris LogisticRegression)",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')} UTC",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; load average before {[round(x, 2) for x in load_before]}, after "
        f"{[round(x, 2) for x in os.getloadavg()]}; load from wrk (1 thread) on the same machine",
        f"- command: `python benchmarks/v2_runtime/run.py --rounds {args.rounds} --duration {args.duration} "
        f"--targets {args.targets} --mlserver-batch-ms {args.mlserver_batch_ms:g}` (`make bench-v2`)",
        f"- medians of {args.rounds} interleaved rounds of {args.duration} s, [min-max] over rounds; request: one FP32 "
        "row (benchmarks/v2_runtime/infer.lua); model: sklearn LogisticRegression on iris, joblib, scikit-learn "
        f"{sklearn_version()} in every venv",
        "- llmserve: `python -m llmserve.runtimes.server` (adaptive batching: max_batch_size 64, max_latency_ms 0); "
        "llmserve-nobatch: `--max-batch-size 1`; llmserve-gateway: the gateway (serve_gateway.py --protocol v2) in "
        "front of the llmserve runtime, CPU counted for both; mlserver-{batch,nobatch}-pw{0,1}: MLServer 1.7.1 + "
        "mlserver-sklearn, `debug: false`, `parallel_workers` 0 or 1, adaptive batching with max_batch_size 64 and "
        f"max_batch_time {args.mlserver_batch_ms:g} ms (batch) or off (nobatch), uvloop 0.21.0; kserve: KServe "
        "0.21.0 ModelServer (benchmarks/v2_runtime/kserve_iris.py) with `--enable_latency_logging false` and "
        "`--log_config_file kserve_logging.json` (its per-request access and timing lines at WARNING)",
        f"- KServe's REST client (InferenceRESTClient): {checks}",
        "",
        "| target | scenario | req/s | p50 ms | p99 ms | server CPU us/req | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, _ in SCENARIOS:
        for target in targets:
            s = summary(target, label)
            lines.append(
                f"| {target.name} | {label} | {_range(target, label, 'rps')} | "
                f"{_range(target, label, 'p50_us', 1e-3, '{:.2f}')} | "
                f"{_range(target, label, 'p99_us', 1e-3, '{:.2f}')} | "
                f"{s['cpu_us_per_request']:.0f} | {s['errors']:.0f} |"
            )
    headline = verdicts(targets)
    picture = args.out.with_suffix(".png")
    lines += ["", *headline["lines"], "", f"![req/s and server CPU per request]({picture.name})"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    headline["runs"] = {t.name: t.results for t in targets}  # every round of every target, for a later reader
    args.out.with_suffix(".json").write_text(json.dumps(headline, indent=1))
    plot(targets, args, picture)
    print("\n".join(lines))


def plot(targets: list[Target], args: argparse.Namespace, path: Path) -> None:
    """req/s and server CPU per request, a pair of panels per scenario, the range over rounds as error bars."""
    panels = []
    for label, _ in SCENARIOS:
        for key, xlabel in (("rps", "req/s"), ("cpu_us_per_request", "server CPU, us per request")):
            bars = [Bar(t.name, [r[key] for r in t.results.get(label, [])], ours=t.name.startswith("llmserve"))
                    for t in targets if t.results.get(label)]  # fmt: skip
            panels.append(Panel(label, xlabel, bars))
    draw(panels, f"iris LogisticRegression, one FP32 row, wrk; median and range of {args.rounds} rounds", path)


def verdicts(targets: list[Target]) -> dict[str, object]:
    """The goal (>= 2x the best-configured MLServer's req/s at c=16, p99 no worse), and the other ratios."""
    by_name = {t.name: t for t in targets}
    lines: list[str] = []
    out: dict[str, object] = {"lines": lines}
    mlservers = [by_name[n] for n in MLSERVERS if n in by_name]
    if "llmserve" in by_name and mlservers:
        best = max(mlservers, key=lambda t: summary(t, "c=16")["rps"])
        ours, theirs = summary(by_name["llmserve"], "c=16"), summary(best, "c=16")
        ratio = ours["rps"] / theirs["rps"]
        out |= {"best_mlserver": best.name, "c16_ratio": ratio, "c16_p99_ms": [ours["p99_us"] / 1000,
                theirs["p99_us"] / 1000]}  # fmt: skip
        lines.append(
            f"- c=16: llmserve / best MLServer ({best.name}) req/s = {ratio:.2f}x (goal >= 2x: "
            f"{'met' if ratio >= 2 else 'MISSED'}); p99 {ours['p99_us'] / 1000:.2f} ms vs "
            f"{theirs['p99_us'] / 1000:.2f} ms (goal: no worse: "
            f"{'met' if ours['p99_us'] <= theirs['p99_us'] else 'MISSED'})"
        )
        unbatched = [t for t in mlservers if "-nobatch-" in t.name]
        if "llmserve-nobatch" in by_name and unbatched:
            best_off = max(unbatched, key=lambda t: summary(t, "c=16")["rps"])
            off, theirs_off = summary(by_name["llmserve-nobatch"], "c=16"), summary(best_off, "c=16")
            lines.append(f"- c=16 without batching on both sides: llmserve-nobatch / {best_off.name} req/s = "
                         f"{off['rps'] / theirs_off['rps']:.2f}x")  # fmt: skip
    if "llmserve" in by_name and "kserve" in by_name:
        ours, theirs = summary(by_name["llmserve"], "c=16"), summary(by_name["kserve"], "c=16")
        lines.append(f"- c=16: llmserve / KServe req/s = {ours['rps'] / theirs['rps']:.2f}x")
    if "llmserve" in by_name and GATEWAY in by_name:
        for label, _ in SCENARIOS:
            direct, through = summary(by_name["llmserve"], label), summary(by_name[GATEWAY], label)
            lines.append(
                f"- {label}: through the gateway / direct req/s = {through['rps'] / direct['rps']:.2f}x; added p50 "
                f"{(through['p50_us'] - direct['p50_us']) / 1000:+.2f} ms, p99 "
                f"{(through['p99_us'] - direct['p99_us']) / 1000:+.2f} ms"
            )
    if "llmserve" in by_name and "llmserve-nobatch" in by_name:
        on, off = summary(by_name["llmserve"], "c=64"), summary(by_name["llmserve-nobatch"], "c=64")
        lines.append(
            f"- c=64: adaptive batching gain (llmserve / llmserve-nobatch req/s) = {on['rps'] / off['rps']:.2f}x"
        )
    return out


if __name__ == "__main__":
    main()
