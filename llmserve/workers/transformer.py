"""A service's transformer as a replica: `python -m llmserve.runtimes.transformer --handler ...`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmserve.spec import InferenceService
from llmserve.workers.plan import WorkerPlan


def transformer_plan(
    service: InferenceService, *, python: str | None = None, base_dir: Path | None = None
) -> WorkerPlan:
    """The plan of one transformer replica. A handler file given as a relative path is resolved against
    `base_dir` (default: the current directory, where llmserve runs), so the replica finds it wherever it starts."""
    transformer = service.spec.transformer
    if transformer is None:
        raise ValueError(f"service '{service.name}' declares no transformer")
    where, _, class_name = transformer.handler.rpartition(":")
    handler = transformer.handler
    if where.endswith(".py"):
        handler = f"{((base_dir or Path.cwd()) / where).resolve()}:{class_name}"
    argv = [
        python or sys.executable, "-m", "llmserve.runtimes.transformer",
        "--handler", handler,
        "--host", "{host}", "--port", "{port}",
        "--timeout-s", f"{transformer.timeout_s:g}",
    ]  # fmt: skip
    if transformer.config:
        argv += ["--config", json.dumps(transformer.config, separators=(",", ":"))]
    return WorkerPlan(
        argv=tuple(argv),
        env={var.name: var.value for var in transformer.env},
        protocol=service.protocol,  # the bodies its hooks take
        health_path="/health",
        startup_timeout_s=120.0,
    )
