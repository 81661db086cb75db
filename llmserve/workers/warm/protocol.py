"""The control channel between a warm pool and its pooled processes: JSON lines over a Unix socket.

The pool listens; each pooled process connects once, at start, and the conversation is:

    worker -> pool   {"type": "started", "worker_id": ..., "pid": ...}          (importing vLLM)
    worker -> pool   {"type": "idle", "preload_s": ..., "vllm_version": ...}    (ready to bind)
    pool -> worker   {"type": "bind", "args": [...], "env": {...}}               (vLLM api_server CLI args)
    worker -> pool   {"type": "binding", "ignored_env": [...]}                   (creating the engine)
    worker -> pool   {"type": "serving", "url": ..., "bind_s": ...}              (GET /health answered 200)
    worker -> pool   {"type": "failed", "error": ...}                            (then it exits)

An idle process exits when the pool's end of the connection closes (the pool is gone); a bound one keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_LINE = 1 << 20

IMPORT_TIME_ENV = frozenset(
    {
        "LD_PRELOAD",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "VLLM_CONFIGURE_LOGGING",
        "VLLM_LOGGING_CONFIG_PATH",
        "VLLM_LOGGING_LEVEL",
        "VLLM_PLUGINS",
        "VLLM_TARGET_DEVICE",
        "CUDA_VISIBLE_DEVICES",
    }
)
"""Variables read while modules are imported: a pooled process started without them cannot honour them at bind
time (the pool's `env` must carry them); bind reports them as ignored."""


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError(f"not a control message: {line[:200]!r}")
    return message
