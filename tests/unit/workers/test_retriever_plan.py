"""The retriever's worker plan, and the spec rule that it is told where its embeddings come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.spec import SpecError, parse_services
from llmserve.workers.retriever import retriever_plan

SPEC = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: docs}
spec:
  predictor:
    model:
      modelFormat: {name: documents}
      storageUri: file:///srv/docs
      args: ARGS
"""
ARGS = '["--embeddings-url", "http://127.0.0.1:8080", "--embeddings-model", "minilm"]'


def test_plan_serves_the_documents_as_v2() -> None:
    (service,) = parse_services(SPEC.replace("ARGS", ARGS))
    assert (service.runtime, service.protocol) == ("llmserve-retriever", "v2")
    plan = retriever_plan(service, Path("/cache/docs"), python="py")
    command = plan.command("127.0.0.1", 9000)
    assert command[:3] == ["py", "-m", "llmserve.runtimes.retriever"]
    assert command[command.index("--documents") + 1] == "/cache/docs"
    assert command[command.index("--name") + 1] == "docs"
    assert command[-1] == "minilm"
    assert (plan.protocol, plan.health_path) == ("v2", "/v2/health/ready")


@pytest.mark.parametrize("args", ["[]", '["--embeddings-url=http://x:1"]'])
def test_the_spec_requires_the_embeddings_flags(args: str) -> None:
    with pytest.raises(SpecError, match=r"needs .*--embeddings-model"):
        parse_services(SPEC.replace("ARGS", args), "docs.yaml")
