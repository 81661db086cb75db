"""The runtime's REST surface as one pure-ASGI app (no framework on the hot path).

Open Inference Protocol (../shared/specs/open-inference-protocol/open_inference_rest.yaml):
  GET  /v2/health/live | /v2/health/ready | /v2 (server metadata)
  GET  /v2/models/{name}[/versions/{v}]          model metadata
  GET  /v2/models/{name}[/versions/{v}]/ready    model ready
  POST /v2/models/{name}[/versions/{v}]/infer    inference (JSON, or Triton's binary tensor extension)
  POST /v2/models/{name}[/versions/{v}]/explain  explain (our extension, V2 shapes)
Triton's repository extension: POST /v2/repository/index, /v2/repository/models/{name}/load|unload.
KServe V1: GET /v1/models, GET /v1/models/{name}, POST /v1/models/{name}:predict | :explain.
GET /metrics: Prometheus. Every error is `{"error": "..."}` with its status, rendered in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import INFERENCE_HEADER
from llmserve.runtimes import v1
from llmserve.runtimes.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
    send_error,
    send_json,
)
from llmserve.runtimes.dataplane import DataPlane
from llmserve.runtimes.rest_codec import decode_request, encode_response, load_json

log = logging.getLogger("llmserve.runtime")

Lifespan = Callable[[], Awaitable[None]]
_HEADER = INFERENCE_HEADER.encode()
_METRICS_TYPE = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


class RuntimeApp:
    def __init__(
        self,
        dataplane: DataPlane,
        *,
        max_body_bytes: int,
        on_startup: Lifespan | None = None,
        on_shutdown: Lifespan | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self._route(scope, receive, send)
            except ServingError as exc:
                await send_error(send, exc)
            except ClientDisconnected:
                return
            except Exception:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                await send_error(send, ServingError(500, "Internal error in the runtime."))
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._on_startup is not None:
                    await self._on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown is not None:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                await self._model_route(scope, receive, send, parts[2], parts[3:], method)
                return
            await self._server_route(scope, receive, send, parts[1:], method)
            return
        if parts[0] == "v1" and len(parts) >= 2 and parts[1] == "models":
            await self._v1_route(scope, receive, send, parts[2:], method)
            return
        if path == "/metrics":
            _expect(method, "GET", path)
            await send_bytes(send, 200, self.dataplane.metrics.render(), _METRICS_TYPE)
            return
        raise _not_found(method, path)

    async def _model_route(
        self, scope: Scope, receive: Receive, send: Send, name: str, rest: list[str], method: str
    ) -> None:
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action == "infer" or action == "explain":
            _expect(method, "POST", scope["path"])
            body = await read_body(scope, receive, self.max_body_bytes)
            request = decode_request(body, header(scope, _HEADER))
            if action == "infer":
                response = await self.dataplane.infer(name, version, request)
            else:
                response = await self.dataplane.explain(name, version, request)
            payload, headers = encode_response(request, response)
            await send_bytes(send, 200, payload, headers)
        elif action == "ready":
            _expect(method, "GET", scope["path"])
            if not self.dataplane.model_ready(name, version):
                raise ServingError(503, f"Model '{name}' is not ready.")
            await send_json(send, 200, {"name": name, "ready": True})
        elif action == "":
            _expect(method, "GET", scope["path"])
            await send_json(send, 200, (await self.dataplane.model_metadata(name, version)).to_json())
        else:
            raise _not_found(method, scope["path"])

    async def _server_route(self, scope: Scope, receive: Receive, send: Send, rest: list[str], method: str) -> None:
        path = scope["path"]
        if rest in ([], [""]):
            _expect(method, "GET", path)
            await send_json(send, 200, self.dataplane.server_metadata().to_json())
        elif rest == ["health", "live"]:
            _expect(method, "GET", path)
            await send_json(send, 200, {"live": True})
        elif rest == ["health", "ready"]:
            _expect(method, "GET", path)
            if not self.dataplane.ready():
                raise ServingError(503, "Not every model is ready yet.")
            await send_json(send, 200, {"ready": True})
        elif rest == ["repository", "index"]:
            _expect(method, "POST", path)
            await send_json(send, 200, self.dataplane.repository_index())
        elif len(rest) == 4 and rest[:2] == ["repository", "models"] and rest[3] in ("load", "unload"):
            _expect(method, "POST", path)
            await read_body(scope, receive, self.max_body_bytes)  # Triton allows parameters; none are used
            if rest[3] == "load":
                await self.dataplane.load(rest[2])
            else:
                await self.dataplane.unload(rest[2])
            await send_json(send, 200, {})
        else:
            raise _not_found(method, path)

    async def _v1_route(self, scope: Scope, receive: Receive, send: Send, rest: list[str], method: str) -> None:
        path = scope["path"]
        if not rest or rest == [""]:
            _expect(method, "GET", path)
            await send_json(send, 200, {"models": self.dataplane.model_names()})
            return
        if len(rest) != 1:
            raise _not_found(method, path)
        name, _, verb = rest[0].partition(":")
        if not verb:
            _expect(method, "GET", path)
            await send_json(send, 200, {"name": name, "ready": self.dataplane.model_ready(name)})
            return
        if verb not in ("predict", "explain"):
            raise _not_found(method, path)
        _expect(method, "POST", path)
        request = v1.to_v2(load_json(await read_body(scope, receive, self.max_body_bytes)))
        if verb == "predict":
            response = await self.dataplane.infer(name, None, request)
            await send_json(send, 200, {"predictions": v1.to_list(response.outputs[0].data)})
        else:
            response = await self.dataplane.explain(name, None, request)
            await send_json(send, 200, {"explanations": v1.to_list(response.outputs[0].data)})


def _expect(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise ServingError(405, f"Method {method} is not allowed on {path}; use {allowed}.", headers={"allow": allowed})


def _not_found(method: str, path: str) -> ServingError:
    return ServingError(404, f"Unknown request URL: {method} {path}.")
