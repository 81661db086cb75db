"""A transformer as a real process (`python -m llmserve.runtimes.transformer`), for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmserve.workers.processes import free_port


@dataclass
class TransformerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def command(handler: str, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmserve.runtimes.transformer", "--handler", handler, "--port", str(port), *args]


@contextmanager
def transformer_process(handler: str, log: Path, *args: str, within_s: float = 30.0) -> Iterator[TransformerProcess]:
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command(handler, port, *args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = TransformerProcess(process, port, log)
    try:
        deadline = time.monotonic() + within_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformer exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{running.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformer not healthy within {within_s} s: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
