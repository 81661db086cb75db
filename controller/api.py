"""The controller's admin API, mounted into the gateway app by the CLI: GET /admin/v1/services."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from controller.reconciler import Controller


def admin_extension(controller: Controller) -> Any:
    def attach(app: FastAPI) -> None:
        router = APIRouter(prefix="/admin/v1")

        @router.get("/services")
        async def services() -> dict[str, Any]:
            return {"services": controller.status()}

        app.include_router(router)

    return attach
