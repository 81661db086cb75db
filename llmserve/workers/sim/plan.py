"""The simulator as a replica: a WorkerPlan the controller's backends can start like a vLLM worker."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmserve.workers.plan import WorkerPlan


def sim_plan(
    served_model_name: str,
    *,
    profile: str = "cpu-smollm2",
    args: Sequence[str] = (),
    tokenizer: str | None = None,
    python: str | None = None,
) -> WorkerPlan:
    """`python -m llmserve.workers.sim --host {host} --port {port} --model NAME --profile P [args]`.

    `args` are simulator flags (profile overrides such as `--num-blocks 64`, `--speed 10`, `--lora a b`);
    it starts in well under a second, so the startup timeout is short.
    """
    argv = [
        python or sys.executable, "-m", "llmserve.workers.sim",
        "--host", "{host}", "--port", "{port}",
        "--model", served_model_name, "--profile", profile,
    ]  # fmt: skip
    if tokenizer is not None:
        argv += ["--tokenizer", tokenizer]
    argv += list(args)
    return WorkerPlan(argv=tuple(argv), env={"PYTHONUNBUFFERED": "1"}, protocol="openai", startup_timeout_s=30.0)
