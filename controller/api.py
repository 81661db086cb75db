"""The controller's admin API, mounted into the gateway app by the CLI: GET /admin/v1/services."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from controller.autoscaling.autoscaler import Autoscaler
from controller.metrics import ControllerCollector
from controller.reconciler import Controller


def admin_extension(controller: Controller, autoscaler: Autoscaler | None = None) -> Any:
    """Adds GET /admin/v1/services to the gateway app, and the controller's metrics to its /metrics."""

    def attach(app: FastAPI) -> None:
        router = APIRouter(prefix="/admin/v1")

        @router.get("/services")
        async def services() -> dict[str, Any]:
            decisions = autoscaler.decisions() if autoscaler is not None else {}
            out = []
            for service in controller.status():
                decision = decisions.get(service["name"])
                service["autoscaler"] = (
                    {"mode": decision.mode, "desired": decision.desired, "reason": decision.reason}
                    if decision is not None
                    else None
                )
                out.append(service)
            return {"services": out, "backend": controller.backend.describe()}

        app.include_router(router)
        app.state.metrics.registry.register(ControllerCollector(controller))

    return attach
