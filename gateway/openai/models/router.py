"""GET /v1/models: the declared LLM services (scaled to zero or not), in OpenAI's list format.

GET /v1/models/{name}: OpenAI's model card for an LLM service; for a predictive (V2) service, KServe V1's model
status `{"name", "ready"}` as its runtime answers it (ready: the service has a ready replica). InferenceGraphs
exposed as models (`spec.exposeAs`) are listed too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI

from llmserve.endpoints import EndpointReader, ServiceInfo
from llmserve.protocol.errors import ServingError

OWNER = "llmserve"


def _model_card(info: ServiceInfo) -> dict[str, Any]:
    return {"id": info.model_name, "object": "model", "created": info.created, "owned_by": OWNER}


def _graph_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": OWNER}


def attach_router(app: FastAPI, endpoints: EndpointReader, graph_models: Callable[[], list[str]] | None = None) -> None:
    """`graph_models`: the model names InferenceGraphs are exposed as."""
    router = APIRouter()
    exposed = graph_models or list

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        cards = [_model_card(s) for s in endpoints.services() if s.protocol == "openai"]
        return {"object": "list", "data": cards + [_graph_card(m) for m in exposed()]}

    @router.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> dict[str, Any]:
        info = endpoints.resolve_model(model)
        if info is None and model in exposed():
            return _graph_card(model)
        if info is None:
            raise ServingError.model_not_found(model)
        if info.protocol == "v2":
            return {"name": info.model_name, "ready": bool(endpoints.ready_endpoints(info.name))}
        return _model_card(info)

    app.include_router(router)
