"""spec.predictor.canaryTrafficPercent, spec.transformer and spec.logger: accepted shapes and the loader's
file-and-field messages for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.spec import InferenceService, SpecError, load_services, parse_services

BASE = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  predictor:
    canaryTrafficPercent: 20
    model:
      modelFormat: {name: huggingface}
      storageUri: file:///models/chat
  transformer:
    handler: configs/transformers/pii_mask.py:PIIMask
    config: {mask: "[redacted]"}
    timeoutSeconds: 5
    minReplicas: 1
    maxReplicas: 3
    env: [{name: MODE, value: strict}]
  logger:
    mode: all
    url: http://127.0.0.1:9999/events
    file: logs/chat.jsonl
    sampleRate: 0.5
    metadataHeaders: [X-Tenant]
"""


def test_new_fields_round_trip() -> None:
    (service,) = parse_services(BASE, "chat.yaml")
    assert service.spec.predictor.canary_traffic_percent == 20
    transformer = service.spec.transformer
    assert transformer is not None
    assert transformer.handler == "configs/transformers/pii_mask.py:PIIMask"
    assert transformer.config == {"mask": "[redacted]"}
    assert (transformer.timeout_s, transformer.min_replicas, transformer.replica_ceiling) == (5.0, 1, 3)
    logger = service.spec.logger
    assert logger is not None
    assert (logger.mode, logger.url, logger.file, logger.sample_rate) == (
        "all",
        "http://127.0.0.1:9999/events",
        "logs/chat.jsonl",
        0.5,
    )
    assert logger.metadata_headers == ["x-tenant"]  # header names compared lowercase
    assert InferenceService.model_validate(service.model_dump(by_alias=True)) == service


def test_all_new_fields_are_optional() -> None:
    text = BASE.split("  transformer:")[0].replace("    canaryTrafficPercent: 20\n", "")
    (service,) = parse_services(text)
    assert service.spec.predictor.canary_traffic_percent is None
    assert service.spec.transformer is None
    assert service.spec.logger is None


@pytest.mark.parametrize(
    "handler", ["x.py:Mask", "configs/t/x.py:Mask", "/abs/path/x.py:Mask_2", "pkg.mod:Mask", "mod:Mask"]
)
def test_handler_forms(handler: str) -> None:
    (service,) = parse_services(BASE.replace("configs/transformers/pii_mask.py:PIIMask", handler))
    assert service.spec.transformer is not None
    assert service.spec.transformer.handler == handler


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("canaryTrafficPercent: 20", "canaryTrafficPercent: 120"), ["spec.predictor.canaryTrafficPercent", "100"]),
        (("canaryTrafficPercent: 20", "canaryTrafficPercent: -1"), ["spec.predictor.canaryTrafficPercent", "0"]),
        (("canaryTrafficPercent: 20", "canaryTraffic: 20"), ["spec.predictor.canaryTraffic", "canaryTrafficPercent"]),
        (("pii_mask.py:PIIMask", "pii_mask.py"), ["spec.transformer.handler", "FILE.py:ClassName"]),
        (("pii_mask.py:PIIMask", "pii_mask.txt:PIIMask"), ["spec.transformer.handler", "neither a .py file"]),
        (("pii_mask.py:PIIMask", "pii_mask.py:9Mask"), ["spec.transformer.handler", "FILE.py:ClassName"]),
        (("    handler: configs/transformers/pii_mask.py:PIIMask\n", ""), ["spec.transformer.handler", "missing"]),
        (("timeoutSeconds: 5", "timeoutSeconds: 0"), ["spec.transformer.timeoutSeconds", "greater than 0"]),
        (("maxReplicas: 3", "maxReplicas: 0"), ["spec.transformer.maxReplicas", "greater than or equal to 1"]),
        (("minReplicas: 1\n    maxReplicas: 3", "minReplicas: 4\n    maxReplicas: 3"), ["spec.transformer", "(3)"]),
        (("    config:", "    handlr: x\n    config:"), ["spec.transformer.handlr", "allowed here", "handler"]),
        (("mode: all", "mode: everything"), ["spec.logger.mode", "'all', 'request' or 'response'"]),
        (("url: http://127.0.0.1:9999/events", "url: ftp://x/y"), ["spec.logger.url", "http:// or https://"]),
        (("sampleRate: 0.5", "sampleRate: 1.5"), ["spec.logger.sampleRate", "less than or equal to 1"]),
        (("[X-Tenant]", "[X-Tenant, Authorization]"), ["spec.logger.metadataHeaders", "Authorization", "never"]),
        (("[X-Tenant]", "[cookie]"), ["spec.logger.metadataHeaders", "cookie carries credentials"]),
        (
            ("    url: http://127.0.0.1:9999/events\n    file: logs/chat.jsonl\n", ""),
            ["spec.logger", "give a sink: url (HTTP) or file"],
        ),
        (("  logger:", "  loger:"), ["spec.loger", "unknown field", "transformer", "logger"]),
    ],
)
def test_bad_fields_name_file_field_and_what_is_allowed(change: tuple[str, str], expected: list[str]) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    with pytest.raises(SpecError) as info:
        parse_services(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml")
    for fragment in expected:
        assert fragment in message, message


def test_example_configs_validate(repo_root: Path) -> None:
    examples = sorted((repo_root / "configs" / "transformers").glob("*.yaml"))
    assert examples, "configs/transformers/ ships example services"
    for path in examples:
        for service in load_services(path):
            assert service.spec.transformer is not None
            file = service.spec.transformer.handler.rsplit(":", 1)[0]
            assert (repo_root / file).is_file(), f"{path.name}: handler file {file} is missing"
