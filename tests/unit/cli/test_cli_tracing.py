"""llmserve/cli.py: --otlp-endpoint and the OTEL_* variables become the gateway's and the workers' settings."""

from __future__ import annotations

import argparse

import pytest

from llmserve import cli


def parsed(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["up", *argv])


def test_the_flag_wins_and_the_workers_export_where_the_gateway_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4317")
    args = parsed("--otlp-endpoint", "http://127.0.0.1:4317")
    settings = cli._gateway_settings(args)
    assert settings.tracing.otlp_endpoint == "http://127.0.0.1:4317"
    workers = cli._worker_tracing(args)
    assert workers is not None
    assert (workers.endpoint, workers.protocol) == ("http://127.0.0.1:4317", "grpc")


def test_off_without_either_and_a_bad_protocol_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert not cli._gateway_settings(parsed()).tracing.enabled
    assert cli._worker_tracing(parsed()) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(cli.UsageError, match="carrier-pigeon"):
        cli._gateway_settings(parsed("--otlp-endpoint", "http://127.0.0.1:4317"))
