"""POST /v1/completions."""

from gateway.openai.completions.router import attach_router

__all__ = ["attach_router"]
