"""`llmserve up` as a subprocess, the way a user runs it, for integration and end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmserve.workers.processes import free_port, group_members
from tests.conftest import REPO


@dataclass
class Up:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    api_key: str | None = None
    control_url: str = ""
    state_dir: Path | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    auth = headers

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def control_headers(self) -> dict[str, str]:
        token = (self.state_dir / "control-token").read_text().strip() if self.state_dir else ""
        return {"authorization": f"Bearer {token}"}

    def admin(self) -> dict[str, Any]:
        """The controller's view: GET /control/v1/status."""
        response = httpx.get(f"{self.control_url}/control/v1/status", headers=self.control_headers, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def services(self) -> list[dict[str, Any]]:
        return list(self.admin()["services"])

    def backend(self) -> dict[str, Any]:
        return dict(self.admin()["backend"])

    def pool_states(self) -> list[str]:
        """States of the warm pool's processes (idle, starting, serving...); [] without a pool."""
        pool = self.backend().get("warm_pool") or {"processes": []}
        return [p["state"] for p in pool["processes"]]

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.services() if s["name"] == name)

    def replicas(self, service: str) -> list[dict[str, Any]]:
        return list(self.service(service)["replicas"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`llmserve ARGS` against this controller (apply, get, delete...), as a user runs it."""
        assert self.state_dir is not None
        return subprocess.run(
            [sys.executable, "-m", "llmserve", *args, "--controller", self.control_url, "--state-dir",
             str(self.state_dir)],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip

    def apply(self, config: Path) -> str:
        """`llmserve apply -f config`; what it printed (it must succeed)."""
        done = self.cli("apply", "-f", str(config))
        assert done.returncode == 0, done.stderr
        return done.stdout

    def replica_pids(self) -> list[int]:
        return [r["pid"] for s in self.services() for r in s["replicas"] if r["pid"]]

    def wait_ready(self, within_s: float) -> None:
        """Until /ready says every service that should be up has a ready replica."""
        self.wait(lambda: httpx.get(f"{self.url}/ready", timeout=5).status_code == 200, within_s, "/ready")

    def wait(self, condition: Any, within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"llmserve up exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{what}: not reached within {within_s} s\n{self.tail()}")


def sim_service(work: Path, template: str) -> Path:
    """An InferenceService file from `template` (`{model_dir}` filled in) whose model directory holds just a
    config: enough for the vLLM-contract simulator, which loads no weights."""
    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    config = work / "sim.yaml"
    config.write_text(template.format(model_dir=model_dir))
    return config


@contextmanager
def llmserve_up(config: Path, work: Path, *extra: str, api_key: str | None = None) -> Iterator[Up]:
    """Start `llmserve up -f config`; on exit, Ctrl-C it and check that no replica process is left."""
    port = free_port()
    control_port = free_port()
    log = work / "llmserve.log"
    state_dir = work / "state"
    cmd = [sys.executable, "-m", "llmserve", "up", "-f", str(config), "--port", str(port), "--grpc-port", "0",
           "--control-port", str(control_port), "--state-dir", str(state_dir), "--log-dir", str(work / "logs"),
           *extra]  # fmt: skip
    if api_key:
        cmd += ["--api-key", api_key]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
    up = Up(f"http://127.0.0.1:{port}", process, log, api_key, f"http://127.0.0.1:{control_port}", state_dir)
    pids: Sequence[int] = []
    try:
        up.wait(lambda: httpx.get(f"{up.url}/health", timeout=2).status_code == 200, 60, "gateway up")
        yield up
        if process.poll() is None:  # (a test that stopped it itself checks for leftovers itself)
            pids = up.replica_pids()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("llmserve up did not stop within 90 s of Ctrl-C") from None
    leftovers = {pid: group_members(pid) for pid in pids if group_members(pid)}
    assert not leftovers, f"replica processes left after Ctrl-C: {leftovers}"
