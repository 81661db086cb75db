"""POST /v1/embeddings."""

from gateway.openai.embeddings.router import attach_router

__all__ = ["attach_router"]
