"""OpenAI-compatible routes: one package per endpoint (a thin router), sharing one proxy service."""
