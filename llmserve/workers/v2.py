"""The V2 (Open Inference Protocol) runtime as a replica: `python -m llmserve.runtimes.server ...`."""

from __future__ import annotations

import sys
from pathlib import Path

from llmserve.spec import InferenceService
from llmserve.workers.plan import WorkerPlan


def v2_plan(service: InferenceService, model_dir: Path, *, python: str | None = None) -> WorkerPlan:
    predictor = service.spec.predictor
    model = predictor.model
    argv = [
        python or sys.executable, "-m", "llmserve.runtimes.server",
        "--host", "{host}", "--port", "{port}", "--grpc-port", "{grpc_port}",
        "--model", f"{service.served_model_name}={model_dir}:{model.model_format.name}",
    ]  # fmt: skip
    if predictor.batcher is not None:
        argv += ["--max-batch-size", str(predictor.batcher.max_batch_size)]
        argv += ["--max-latency-ms", f"{predictor.batcher.max_latency_ms:g}"]
    memory = model.resources.limits.memory
    if memory is not None:
        argv += ["--memory-budget", str(memory)]  # the runtime unloads least-recently-used models beyond it
    argv += model.args
    return WorkerPlan(
        argv=tuple(argv),
        env={var.name: var.value for var in model.env},
        protocol="v2",
        health_path="/v2/health/ready",
        startup_timeout_s=300.0,
    )
