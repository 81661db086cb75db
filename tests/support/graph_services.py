"""Real services for graph tests: simulated vLLM workers (`python -m llmserve.workers.sim`) as processes, and a
GraphApp over an HTTP step caller on a real port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.graph import GraphRouter
from gateway.graph.asgi import GraphApp
from gateway.graph.http_caller import HttpStepCaller, ServiceAddress
from llmserve.spec.graph import InferenceGraph
from llmserve.workers.processes import free_port
from tests.support.servers import ServerThread, serving


@dataclass
class SimProcess:
    process: subprocess.Popen[bytes]
    port: int
    model: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str) -> float:
        """The sum of a vLLM metric's samples on this worker's /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        prefixes = (f"vllm:{name}{{", f"vllm:{name} ")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes))


@contextmanager
def sim_process(model: str, log: Path, *args: str) -> Iterator[SimProcess]:
    port = free_port()
    cmd = [sys.executable, "-m", "llmserve.workers.sim", "--host", "127.0.0.1", "--port", str(port), "--model", model]
    with open(log, "wb") as out:
        process = subprocess.Popen([*cmd, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sim = SimProcess(process, port, model)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sim exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{sim.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sim not ready: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield sim
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def graph_of(name: str, nodes: dict[str, Any], **spec: Any) -> InferenceGraph:
    return InferenceGraph.model_validate(
        {
            "apiVersion": "serving.llmserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": name},
            "spec": {"nodes": nodes, **spec},
        }
    )


@contextmanager
def graph_server(
    graphs: list[InferenceGraph], services: Mapping[str, ServiceAddress], **router_kw: Any
) -> Iterator[ServerThread]:
    """A GraphApp serving `graphs` on a loopback port; steps go straight to `services` over HTTP."""
    caller = HttpStepCaller(services)
    routers = {g.name: GraphRouter(g, caller, **router_kw) for g in graphs}
    with serving(GraphApp(routers)) as server:
        yield server
