"""Liveness (/health), readiness (/ready: the fleet is known and every service that should be up has a ready
replica), /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response

from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from llmserve.endpoints import EndpointReader

Readiness = Callable[[], str | None]  # why the gateway cannot serve yet (e.g. no snapshot from the controller)


def attach_router(
    app: FastAPI, endpoints: EndpointReader, metrics: GatewayMetrics, readiness: Readiness | None = None
) -> None:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        blocked = readiness() if readiness is not None else None
        if blocked is not None:
            return JSONResponse({"status": "waiting", "reason": blocked}, status_code=503)
        services: dict[str, Any] = {}
        waiting = []
        for info in endpoints.services():
            count = len(endpoints.ready_endpoints(info.name))
            services[info.name] = {"ready_replicas": count, "min_replicas": info.min_replicas}
            if info.min_replicas > 0 and count == 0:
                waiting.append(info.name)
        body = {"status": "waiting" if waiting else "ready", "waiting_for": waiting, "services": services}
        return JSONResponse(body, status_code=503 if waiting else 200)

    @router.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(router)
