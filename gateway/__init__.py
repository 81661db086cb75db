"""llmserve's data plane: the HTTP front door (OpenAI /v1, health, metrics), routing and the worker hop."""
