"""Liveness (/health), readiness (/ready: every service that should be up has a ready replica), /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response

from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from llmserve.endpoints import EndpointReader


def attach_router(app: FastAPI, endpoints: EndpointReader, metrics: GatewayMetrics) -> None:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
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
