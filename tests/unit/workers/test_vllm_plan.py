"""The vLLM worker plan: CPU defaults, user flags winning, and when a backend may pin its compute threads."""

from __future__ import annotations

from pathlib import Path

from llmserve.spec import InferenceService, parse_services
from llmserve.workers.vllm import CPU_BIND_ENV, vllm_plan


def service(args: str = "[]", env: str = "[]") -> InferenceService:
    (parsed,) = parse_services(f"""
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: llm}}
spec:
  predictor:
    model: {{modelFormat: {{name: huggingface}}, storageUri: file:///m, args: {args}, env: {env}}}
""")
    return parsed


def test_cpu_plan_defaults_and_bindable_threads() -> None:
    plan = vllm_plan(service(), Path("/m"), python="py", cpu=True)
    assert plan.argv[:3] == ("py", "-m", "vllm.entrypoints.openai.api_server")
    assert "--enforce-eager" in plan.argv
    assert plan.argv[plan.argv.index("--dtype") + 1] == "float32"
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert plan.cpu_bind_env == CPU_BIND_ENV


def test_user_flags_win_and_multi_rank_or_user_cpus_are_left_alone() -> None:
    plan = vllm_plan(service(args='["--dtype", "bfloat16"]'), Path("/m"), cpu=True)
    assert plan.argv[plan.argv.index("--dtype") + 1] == "bfloat16"
    assert plan.argv.count("--dtype") == 1
    assert vllm_plan(service(args='["-tp", "2"]'), Path("/m"), cpu=True).cpu_bind_env is None
    user_cpus = service(env=f'[{{name: {CPU_BIND_ENV}, value: "0-3"}}]')
    assert vllm_plan(user_cpus, Path("/m"), cpu=True).cpu_bind_env is None
    assert vllm_plan(service(), Path("/m"), cpu=False).cpu_bind_env is None  # GPU build: no thread pinning


def test_pooling_runner_gets_no_prefix_caching() -> None:
    # vLLM-CPU 0.32's engine fails to start an encoder-only embedding model with prefix caching on.
    for args in ('["--runner", "pooling"]', '["--runner=pooling"]', '["--task", "embed"]'):
        argv = vllm_plan(service(args), Path("/m"), cpu=True).argv
        assert "--enable-prefix-caching" not in argv
        assert "--dtype" in argv
    assert "--enable-prefix-caching" in vllm_plan(service('["--runner", "generate"]'), Path("/m"), cpu=True).argv
