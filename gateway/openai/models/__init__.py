"""GET /v1/models and /v1/models/{model}."""

from gateway.openai.models.router import attach_router

__all__ = ["attach_router"]
