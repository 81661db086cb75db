"""WorkerPlan: the command, environment and health check of one replica, independent of where it runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.endpoints import ServiceProtocol


@dataclass(frozen=True)
class WorkerPlan:
    """`{host}`, `{port}` (HTTP) and `{grpc_port}` in argv are filled in by the backend that starts the process."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    protocol: ServiceProtocol = "openai"
    health_path: str = "/health"
    startup_timeout_s: float = 900.0
    # What one replica needs, in Ray's resource names: "CPU", "GPU" (counts), "memory" (bytes), or custom names.
    # Backends that schedule replicas onto machines (Ray) reserve them; the local backend ignores them.
    resources: Mapping[str, float] = field(default_factory=dict)
    # The environment variable through which a backend may pin the worker's compute threads to a CPU list
    # ("0,2-3"): vLLM-CPU's VLLM_CPU_OMP_THREADS_BIND. None: the worker places its threads itself.
    cpu_bind_env: str | None = None

    @property
    def needs_grpc_port(self) -> bool:
        """Whether the command takes a second port, for gRPC (`{grpc_port}` in argv)."""
        return any("{grpc_port}" in arg for arg in self.argv)

    def command(self, host: str, port: int, grpc_port: int | None = None) -> list[str]:
        values = {"{host}": host, "{port}": str(port), "{grpc_port}": str(grpc_port)}
        out = []
        for arg in self.argv:
            for key, value in values.items():
                arg = arg.replace(key, value)
            out.append(arg)
        return out
