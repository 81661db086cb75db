"""What the front door (llmserve/frontdoor.py) costs a normal request: the same trivial ASGI app on uvicorn's
httptools protocol, plain vs through `uvicorn_config` (header limits, read deadlines, connection cap), with wrk.

Scenarios: keep-alive GETs at c=1 and c=16 (the head-deadline timer is armed once per connection) and a new
connection per request at c=16 (a timer per request: the worst case). Rounds are interleaved (plain, front door,
plain, ...) and the front-door/plain ratio is taken round by round.

    python benchmarks/front_door/run.py --rounds 5 --duration 5

Writes benchmarks/results/front_door.md with this command, the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULT = REPO / "benchmarks" / "results" / "front_door.md"
SCENARIOS = [("keep-alive c=1", 1, False), ("keep-alive c=16", 16, False), ("new connection c=16", 16, True)]
TARGETS = ("plain", "front-door")
_BODY = b'{"ok":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _BODY})


def serve(target: str, port: int) -> None:
    import uvicorn
    import uvloop

    from llmserve.frontdoor import FrontDoorSettings, uvicorn_config

    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on"}
    if target == "front-door":
        config = uvicorn_config(app, host="127.0.0.1", port=port, front_door=FrontDoorSettings(), **options)
    else:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", ws="none", **options)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


def start(target: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", target, "--port", str(port)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{target} server did not start")


def wrk(port: int, connections: int, close: bool, duration: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = (_ms(re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)) for p in ("50", "99"))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": 1.0 if errors else 0.0}


def _ms(match: re.Match[str] | None) -> float:
    assert match is not None
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--serve", choices=TARGETS)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    from llmserve.workers.processes import free_port

    ports = {target: free_port() for target in TARGETS}
    servers = {target: start(target, port) for target, port in ports.items()}
    load_before = os.getloadavg()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for scenario, connections, close in SCENARIOS:
                for target in TARGETS:
                    run = wrk(ports[target], connections, close, args.duration)
                    results.setdefault((scenario, target), []).append(run)
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(10)
    load_after = os.getloadavg()
    lines = [
        "# Front door: what the connection limits cost a normal request",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min; the machine is shared with other "
        "sessions' work, so absolute figures are noisy: read the round-by-round ratios)",
        f"- command: `python benchmarks/front_door/run.py --rounds {args.rounds} --duration {args.duration}`",
        "- app: a pure-ASGI 200 with an 11-byte JSON body; plain: uvicorn.Config(http='httptools', ws='none'); "
        "front door: llmserve.frontdoor.uvicorn_config with the default FrontDoorSettings; wrk -t1 on the same machine",
        "",
        "| scenario | target | req/s (median) | p50 ms | p99 ms | req/s ratio front door / plain, median (min..max) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for scenario, _, _ in SCENARIOS:
        plain, front = results[(scenario, "plain")], results[(scenario, "front-door")]
        ratios = [f["rps"] / p["rps"] for f, p in zip(front, plain, strict=True)]
        for target, runs in (("plain", plain), ("front-door", front)):
            spread = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})"
            ratio = spread if target == "front-door" else ""
            lines.append(
                f"| {scenario} | {target} | {statistics.median(r['rps'] for r in runs):.0f} | "
                f"{statistics.median(r['p50'] for r in runs):.2f} | {statistics.median(r['p99'] for r in runs):.2f} | "
                f"{ratio} |"
            )
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
