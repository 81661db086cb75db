"""The control API (llmserve/protocol/control.py has the routes and the wire format), as an ASGI app.

What it serves comes in as arguments: the published state (and its watch), the controller (apply, delete, status,
suspect reports), the autoscaler (wake, decisions), the demand aggregator (reports), the metrics collector. Every
route but /health needs the bearer token. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.autoscaling.autoscaler import Autoscaler
from controller.demand import DemandAggregator
from controller.graphs import ServiceInUse
from controller.prometheus_sd import prometheus_targets
from controller.reconciler import Controller
from controller.state import ControlState
from llmserve.protocol.control import (
    BOOKMARK_INTERVAL_S,
    PREFIX,
    WATCH_CONTENT_TYPE,
    DemandReport,
    SuspectReport,
    WakeRequest,
    bookmark_event,
)
from llmserve.spec import SpecError, parse_resources

log = logging.getLogger("llmserve.controller")

PUBLIC = frozenset({"/health"})
MAX_SPEC_BYTES = 1024 * 1024


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(status: int, payload: Any) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


class TokenCheck:
    """Pure-ASGI bearer-token check (constant-time) in front of the control API."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if hmac.compare_digest(presented, self.token):
            await self.app(scope, receive, send)
            return
        response = _json(401, {"error": "Missing or invalid control token: send 'Authorization: Bearer <token>'."})
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)


def create_control_app(
    state: ControlState,
    controller: Controller,
    autoscaler: Autoscaler,
    demand: DemandAggregator,
    *,
    token: str,
    metrics: CollectorRegistry,
    describe_backend: Callable[[], dict[str, Any]] | None = None,
) -> ASGIApp:
    app = FastAPI(title="llmserve control API", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(ControlError)
    async def control_error(_: Request, exc: ControlError) -> Response:
        return _json(exc.status, {"error": exc.message})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _json(404, {"error": f"Unknown request URL: {request.method} {request.url.path}."})
        if exc.status_code == 405:
            return _json(405, {"error": f"Method {request.method} is not allowed on {request.url.path}."})
        return _json(exc.status_code, {"error": str(exc.detail)})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return _json(400, {"error": f"Invalid request: {exc.errors()[0].get('msg', 'invalid')}."})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("control API: unhandled error on %s %s", request.method, request.url.path)
        return _json(500, {"error": "Internal error in the controller."})

    async def body_of(request: Request, model: Any) -> Any:
        raw = await request.body()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ControlError(400, f"Invalid {model.__name__}: {where}: {first['msg']}.") from None

    @app.get("/health")
    async def health() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get(f"{PREFIX}/state")
    async def snapshot() -> Response:
        return _json(200, state.snapshot())

    @app.get(f"{PREFIX}/watch")
    async def watch(resourceVersion: str = "") -> StreamingResponse:
        return StreamingResponse(_watch_stream(state, resourceVersion), media_type=WATCH_CONTENT_TYPE)

    @app.post(f"{PREFIX}/demand")
    async def report_demand(request: Request) -> Response:
        report: DemandReport = await body_of(request, DemandReport)
        taken = demand.report(report.gateway, report.seq, {k: v.demand() for k, v in report.services.items()})
        return _json(200, {"accepted": taken})

    @app.post(f"{PREFIX}/wake")
    async def wake(request: Request) -> Response:
        wake: WakeRequest = await body_of(request, WakeRequest)
        if not controller.has_service(wake.service):
            raise ControlError(404, f"No service named '{wake.service}'.")
        autoscaler.wake(wake.service)
        return _json(202, {"woken": wake.service})

    @app.post(f"{PREFIX}/suspect")
    async def suspect(request: Request) -> Response:
        report: SuspectReport = await body_of(request, SuspectReport)
        log.info("gateway %s took replica %s out of rotation: %s", report.gateway, report.replica, report.reason or "-")
        return _json(202, {"checking": controller.suspect(report.service, report.replica)})

    @app.get(f"{PREFIX}/services")
    async def list_services() -> Response:
        return _json(200, {"services": _with_decisions(controller.status(), autoscaler, demand)})

    @app.get(f"{PREFIX}/services/{{name}}")
    async def get_service(name: str) -> Response:
        found = [s for s in controller.status() if s["name"] == name]
        if not found:
            raise ControlError(404, f"No service named '{name}'.")
        return _json(200, _with_decisions(found, autoscaler, demand)[0])

    @app.put(f"{PREFIX}/services")
    async def apply(request: Request, source: str = "<request>") -> Response:
        raw = await request.body()
        if len(raw) > MAX_SPEC_BYTES:
            raise ControlError(413, f"The spec is larger than {MAX_SPEC_BYTES} bytes.")
        try:
            running = [s.name for s in controller.services()]
            text = raw.decode("utf-8", "replace")
            declared = parse_resources(text, source, known_services=running, where="in this file or on the controller")
            outcome = controller.apply(declared.services, declared.graphs, source=source)
        except SpecError as exc:
            raise ControlError(400, str(exc)) from None
        return _json(200, {"applied": outcome, "resourceVersion": state.resource_version})

    @app.delete(f"{PREFIX}/services/{{name}}")
    async def delete(name: str) -> Response:
        try:
            deleted = controller.delete(name)
        except ServiceInUse as exc:
            raise ControlError(409, str(exc)) from None
        if not deleted:
            raise ControlError(404, f"No service named '{name}'.")
        return _json(200, {"deleted": name, "resourceVersion": state.resource_version})

    @app.get(f"{PREFIX}/graphs")
    async def list_graphs() -> Response:
        return _json(200, {"graphs": controller.graph_status()})

    @app.get(f"{PREFIX}/graphs/{{name}}")
    async def get_graph(name: str) -> Response:
        found = [g for g in controller.graph_status() if g["name"] == name]
        if not found:
            raise ControlError(404, f"No InferenceGraph named '{name}'.")
        return _json(200, found[0])

    @app.delete(f"{PREFIX}/graphs/{{name}}")
    async def delete_graph(name: str) -> Response:
        if not controller.delete_graph(name):
            raise ControlError(404, f"No InferenceGraph named '{name}'.")
        return _json(200, {"deleted": f"graph/{name}", "resourceVersion": state.resource_version})

    @app.get(f"{PREFIX}/prometheus/targets")
    async def targets() -> Response:
        """Prometheus HTTP service discovery: every ready replica's /metrics (controller/prometheus_sd.py)."""
        return _json(200, prometheus_targets({"services": controller.status()}))

    @app.get(f"{PREFIX}/status")
    async def status() -> Response:
        return _json(
            200,
            {
                "resourceVersion": state.resource_version,
                "services": _with_decisions(controller.status(), autoscaler, demand),
                "graphs": controller.graph_status(),
                "gateways": demand.gateways(),
                "watchers": state.watchers(),
                "backend": describe_backend() if describe_backend is not None else controller.backend.describe(),
            },
        )

    return TokenCheck(app, token)


def _with_decisions(
    services: list[dict[str, Any]], autoscaler: Autoscaler, demand: DemandAggregator
) -> list[dict[str, Any]]:
    """The services' status with the autoscaler's last decision and the demand summed over the gateways."""
    decisions = autoscaler.decisions()
    for service in services:
        service["demand"] = dataclasses.asdict(demand.demand(service["name"]))
        decision = decisions.get(service["name"])
        service["autoscaler"] = (
            {"mode": decision.mode, "desired": decision.desired, "reason": decision.reason}
            if decision is not None
            else None
        )
    return services


async def _watch_stream(state: ControlState, resource_version: str) -> AsyncIterator[bytes]:
    """A snapshot (or the changes after `resource_version`), then every change, one JSON object per line."""
    watcher = state.watch()
    try:
        changes = state.changes_since(resource_version) if resource_version else None
        if changes is None:
            yield _line(state.snapshot())
        else:
            for event in changes:
                yield _line(event)
        while not watcher.ended.is_set():
            next_event = asyncio.ensure_future(watcher.queue.get())
            ended = asyncio.ensure_future(watcher.ended.wait())
            try:
                done, _ = await asyncio.wait({next_event, ended}, timeout=BOOKMARK_INTERVAL_S,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                next_event.cancel()
                ended.cancel()
            if next_event not in done or next_event.cancelled():
                if not watcher.ended.is_set():
                    yield _line(bookmark_event(state.resource_version))
                continue
            event = next_event.result()
            if watcher.behind:
                watcher.restart()
                yield _line(state.snapshot())
                continue
            yield _line(event)
    finally:
        state.unwatch(watcher)


def _line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event) + b"\n"
