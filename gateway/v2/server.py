"""What the gateway answers itself under /v2, for the whole fleet of V2 services rather than one replica:
server metadata (`GET /v2`), liveness (`/v2/health/live`) and readiness (`/v2/health/ready`: every V2 service
with minReplicas > 0 has a ready replica)."""

from __future__ import annotations

import orjson

import llmserve
from gateway.asgi import Receive, Scope, Send, send_bytes, send_json
from gateway.v2.errors import method_not_allowed
from gateway.v2.services import V2Services
from llmserve.protocol.errors import ServingError

NAME = "llmserve"
VERSION = llmserve.__version__
# What passes through the gateway to the runtimes (the repository extension stays per replica).
EXTENSIONS = ("binary_tensor_data", "explain", "kserve_v1")
PATHS = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})


def not_ready_message(waiting: list[str]) -> str:
    return f"No ready replica yet for: {', '.join(sorted(waiting))}."


class ServerRoutes:
    """ASGI app for PATHS (GET only)."""

    def __init__(self, services: V2Services) -> None:
        self.services = services
        self._metadata = orjson.dumps({"name": NAME, "version": VERSION, "extensions": list(EXTENSIONS)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["method"] != "GET":
            raise method_not_allowed(scope["method"], path, "GET")
        if path == "/v2/health/live":
            await send_json(send, 200, {"live": True})
        elif path == "/v2/health/ready":
            waiting = self.services.waiting_services()
            if waiting:
                raise ServingError(503, not_ready_message(waiting))
            await send_json(send, 200, {"ready": True})
        else:
            await send_bytes(send, 200, self._metadata)
