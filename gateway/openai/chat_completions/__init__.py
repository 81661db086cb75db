"""POST /v1/chat/completions."""

from gateway.openai.chat_completions.router import attach_router

__all__ = ["attach_router"]
