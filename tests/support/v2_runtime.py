"""The V2 runtime as a real process (`python -m llmserve.runtimes.server`), for integration tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmserve.workers.processes import free_port


@dataclass
class RuntimeProcess:
    process: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def wait_ready(runtime: RuntimeProcess, within_s: float) -> float:
    """Poll /v2/health/ready until 200; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if runtime.process.poll() is not None:
            raise RuntimeError(f"runtime exited with {runtime.process.returncode}: {runtime.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{runtime.url}/v2/health/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"runtime not ready within {within_s} s: {runtime.log.read_text()[-2000:]}")


@contextmanager
def runtime_process(args: list[str], log: Path, within_s: float = 60.0) -> Iterator[RuntimeProcess]:
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "llmserve.runtimes.server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--grpc-port", str(grpc_port), *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    runtime = RuntimeProcess(process, port, grpc_port, log)
    try:
        wait_ready(runtime, within_s)
        yield runtime
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def runtime_processes(specs: list[tuple[list[str], Path]], within_s: float = 60.0) -> Iterator[list[RuntimeProcess]]:
    """Several runtimes (args, log) started at once (their start-ups overlap), all stopped at the end."""
    with ExitStack() as stack:
        with ThreadPoolExecutor(len(specs)) as pool:
            futures = [pool.submit(stack.enter_context, runtime_process(args, log, within_s)) for args, log in specs]
        yield [future.result() for future in futures]
