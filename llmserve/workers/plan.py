"""WorkerPlan: the command, environment and health check of one replica, independent of where it runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.endpoints import ServiceProtocol


@dataclass(frozen=True)
class WorkerPlan:
    """`{host}` and `{port}` in argv are filled in by the backend that starts the process."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    protocol: ServiceProtocol = "openai"
    health_path: str = "/health"
    startup_timeout_s: float = 900.0

    def command(self, host: str, port: int) -> list[str]:
        return [arg.replace("{host}", host).replace("{port}", str(port)) for arg in self.argv]
