"""The warm pool: pre-started, model-less vLLM worker processes that bind to a model in seconds.

Client side only (stdlib + `llmserve.workers.plan`): `import llmserve.workers.warm` never imports vLLM or torch.
The pooled process itself is `python -m llmserve.workers.warm` (`worker.py`); what it borrows from vLLM's internals
lives in `vllm_internals.py`.
"""

from llmserve.workers.warm.pool import (
    DEFAULT_ENV,
    BindRequest,
    NotWarmable,
    PooledProcess,
    WarmPool,
    WarmPoolError,
    WorkerState,
)

__all__ = [
    "DEFAULT_ENV",
    "BindRequest",
    "NotWarmable",
    "PooledProcess",
    "WarmPool",
    "WarmPoolError",
    "WorkerState",
]
