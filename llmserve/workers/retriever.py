"""The retriever runtime as a replica: `python -m llmserve.runtimes.retriever ...` over the pulled document set."""

from __future__ import annotations

import sys
from pathlib import Path

from llmserve.spec import InferenceService
from llmserve.workers.plan import WorkerPlan


def retriever_plan(service: InferenceService, documents: Path, *, python: str | None = None) -> WorkerPlan:
    """`args` carry `--embeddings-model` (the spec requires it), optionally `--embeddings-url` (default: the gateway
    the controller names in LLMSERVE_GATEWAY_URL) and `--top-k`. Ready once every passage is embedded: that waits
    for the embeddings service, which may be starting too."""
    model = service.spec.predictor.model
    argv = [
        python or sys.executable, "-m", "llmserve.runtimes.retriever",
        "--host", "{host}", "--port", "{port}",
        "--name", service.served_model_name, "--documents", str(documents),
        *model.args,
    ]  # fmt: skip
    return WorkerPlan(
        argv=tuple(argv),
        env={"PYTHONUNBUFFERED": "1", **{var.name: var.value for var in model.env}},
        protocol="v2",
        health_path="/v2/health/ready",
        startup_timeout_s=900.0,
    )
