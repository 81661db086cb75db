"""`llmserve controller` and `llmserve gateway` as separate subprocesses, the way they are deployed, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llmserve.workers.processes import alive, free_port, group_members
from tests.conftest import REPO


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def wait_for(condition: Callable[[], bool], within_s: float, what: str, log: Callable[[], str] = str) -> None:
    """Poll `condition` (HTTP errors count as not yet) until true; AssertionError with the log after `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {within_s} s\n{log()}")


@dataclass
class ControllerProcess:
    """A running `llmserve controller` (restartable on the same port and state dir)."""

    config: Path | None
    work: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    @property
    def log(self) -> Path:
        return self.work / "controller.log"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {(self.state_dir / 'control-token').read_text().strip()}"}

    def tail(self) -> str:
        return _tail(self.log)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "llmserve", "controller", "--port", str(self.port),
               "--state-dir", str(self.state_dir), "--log-dir", str(self.work / "logs"), *self.extra]  # fmt: skip
        if self.config is not None:
            cmd += ["-f", str(self.config)]
        self.process = _start(cmd, self.log)
        wait_for(lambda: httpx.get(f"{self.url}/health", timeout=2).status_code == 200, 60, "controller up", self.tail)

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/control/v1/status", headers=self.headers, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def pids(self, name: str) -> set[int]:
        return {r["pid"] for r in self.service(name)["replicas"] if r["pid"]}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An `llmserve` client command against this controller (apply, delete, get, status)."""
        cmd = [sys.executable, "-m", "llmserve", *args, "--controller", self.url, "--state-dir", str(self.state_dir)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(60)


@dataclass
class GatewayProcess:
    controller: ControllerProcess
    work: Path
    name: str = "gateway"
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    def tail(self) -> str:
        return _tail(self.log)

    def start(self, *, wait_ready: bool = True) -> None:
        cmd = [sys.executable, "-m", "llmserve", "gateway", "--controller", self.controller.url,
               "--state-dir", str(self.controller.state_dir), "--port", str(self.port), "--grpc-port", "0",
               *self.extra]  # fmt: skip
        self.process = _start(cmd, self.log)
        if wait_ready:
            wait_for(
                lambda: httpx.get(f"{self.url}/ready", timeout=2).status_code == 200, 60, "gateway ready", self.tail
            )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def topology(
    config: Path | None, work: Path, gateways: int = 1, *, controller_extra: tuple[str, ...] = ()
) -> Iterator[tuple[ControllerProcess, list[GatewayProcess]]]:
    """A controller and `gateways` gateway processes; on exit all are stopped and no replica process is left."""
    controller = ControllerProcess(config, work, extra=controller_extra)
    fleet = [GatewayProcess(controller, work, name=f"gateway-{i}") for i in range(gateways)]
    pids: set[int] = set()
    try:
        controller.start()
        for gateway in fleet:
            gateway.start()
        yield controller, fleet
        if controller.process is not None and controller.process.poll() is None:
            pids = {r["pid"] for s in controller.status()["services"] for r in s["replicas"] if r["pid"]}
    finally:
        for gateway in fleet:
            gateway.stop()
        if controller.process is not None and controller.process.poll() is None:
            controller.kill(signal.SIGTERM)  # stops every replica
    left = {pid: group_members(pid) for pid in pids if alive(pid) or group_members(pid)}
    assert not left, f"replica processes left after the controller stopped: {left}"
