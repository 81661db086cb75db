"""Wire types shared by the gateway and the workers: OpenAI pass-through models and the one error type."""
