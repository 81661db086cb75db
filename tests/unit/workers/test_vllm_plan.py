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


def test_tracing_adds_the_otlp_endpoint_and_transport_unless_the_user_chose_one() -> None:
    from llmserve.workers.tracing import WorkerTracing

    tracing = WorkerTracing(endpoint="http://127.0.0.1:4318/v1/traces", protocol="http/protobuf")
    plan = vllm_plan(service(), Path("/m"), cpu=True, tracing=tracing)
    assert plan.argv[plan.argv.index("--otlp-traces-endpoint") + 1] == "http://127.0.0.1:4318/v1/traces"
    assert plan.env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert plan.env["OTEL_SERVICE_NAME"] == "vllm-llm"
    assert "--otlp-traces-endpoint" not in vllm_plan(service(), Path("/m"), cpu=True).argv
    own = vllm_plan(service(args='["--otlp-traces-endpoint", "grpc://collector:4317"]'), Path("/m"), tracing=tracing)
    assert own.argv.count("--otlp-traces-endpoint") == 1
    assert own.argv[own.argv.index("--otlp-traces-endpoint") + 1] == "grpc://collector:4317"
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" not in own.env
