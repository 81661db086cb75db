"""GET /health, /ready and /metrics."""

from gateway.health.router import attach_router

__all__ = ["attach_router"]
