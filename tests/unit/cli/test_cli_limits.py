"""llmserve/cli.py: the limit, drain, backpressure and timeout flags become the gateway's and the controller's
settings, the same on up, gateway and controller; a bad value is a usage error."""

from __future__ import annotations

import argparse

import pytest

from llmserve import cli


def parsed(command: str, *argv: str) -> argparse.Namespace:
    return cli._parser().parse_args([command, *argv])


def test_the_defaults() -> None:
    settings = cli._gateway_settings(parsed("up"))
    assert settings.drain_timeout_s == 30
    assert settings.max_requests_per_replica == 256
    assert settings.max_tokens_per_replica is None
    assert settings.upstream_first_byte_timeout_s == 10
    assert settings.upstream_stream_idle_timeout_s == 120
    assert settings.front_door.max_header_bytes == 64 * 1024


@pytest.mark.parametrize("command", ["up", "gateway"])
def test_the_flags(command: str) -> None:
    args = parsed(command, "--drain-timeout", "0", "--max-requests-per-replica", "0", "--max-tokens-per-replica",
                  "8192", "--queue-depth", "7", "--admission-timeout", "2.5", "--first-byte-timeout", "0",
                  "--stream-idle-timeout", "30", "--outlier-failures", "0", "--header-timeout", "3")  # fmt: skip
    settings = cli._gateway_settings(args)
    assert settings.drain_timeout_s == 0
    assert settings.max_requests_per_replica is None  # 0: no cap
    assert settings.max_tokens_per_replica == 8192
    assert (settings.activator_queue_depth, settings.admission_timeout_s) == (7, 2.5)
    assert settings.upstream_first_byte_timeout_s is None
    assert settings.upstream_stream_idle_timeout_s == 30
    assert settings.outlier_consecutive_failures == 0
    assert settings.front_door.header_timeout_s == 3


def test_the_controller_drains_its_replicas_as_long() -> None:
    assert parsed("controller", "--drain-timeout", "12").drain_timeout == 12
    assert cli._front_door(parsed("controller", "--max-connections", "9")).max_connections == 9


def test_a_bad_value_is_a_usage_error() -> None:
    with pytest.raises(cli.UsageError, match="activator_queue_depth"):
        cli._gateway_settings(parsed("gateway", "--queue-depth", "-1"))
