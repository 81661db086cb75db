"""llmserve/frontdoor.py: settings and config builders (the limits: tests/integration/test_front_door.py)."""

from __future__ import annotations

import argparse
import resource

import pytest
from pydantic import ValidationError

from llmserve.frontdoor import (
    FrontDoorProtocol,
    FrontDoorSettings,
    add_front_door_arguments,
    ensure_descriptors,
    front_door_from_args,
    grpc_server_options,
    uvicorn_config,
)


async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_defaults_are_the_documented_ones() -> None:
    limits = FrontDoorSettings()
    assert (limits.max_header_bytes, limits.max_header_count) == (64 * 1024, 100)
    assert (limits.header_timeout_s, limits.body_idle_timeout_s) == (10.0, 10.0)
    with pytest.raises(ValidationError):
        FrontDoorSettings(header_timeout_s=0)
    with pytest.raises(ValidationError):
        FrontDoorSettings(unknown=1)  # type: ignore[call-arg]


def test_flags_map_to_settings_and_bad_values_are_usage_errors() -> None:
    parser = argparse.ArgumentParser()
    add_front_door_arguments(parser)
    args = parser.parse_args(["--max-header-bytes", "4096", "--header-timeout", "2.5", "--max-connections", "7"])
    limits = front_door_from_args(parser, args)
    assert (limits.max_header_bytes, limits.header_timeout_s, limits.max_connections) == (4096, 2.5, 7)
    with pytest.raises(SystemExit):
        front_door_from_args(parser, parser.parse_args(["--max-header-count", "0"]))


def test_the_config_uses_the_front_door_protocol_and_keeps_its_own_choices() -> None:
    config = uvicorn_config(app, host="127.0.0.1", port=0, front_door=FrontDoorSettings(), log_level="warning")
    config.load()
    assert config.http_protocol_class is FrontDoorProtocol
    assert config.ws_protocol_class is None
    assert config.front_door == FrontDoorSettings()
    for fixed in ("http", "ws", "limit_concurrency"):
        with pytest.raises(TypeError):
            uvicorn_config(app, host="127.0.0.1", port=0, front_door=FrontDoorSettings(), **{fixed: None})


def test_grpc_options_are_explicit() -> None:
    options = dict(grpc_server_options(FrontDoorSettings(max_header_bytes=16384), max_message_bytes=1000))
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == 16384
    assert options["grpc.max_receive_message_length"] == 1000
    assert options["grpc.server_handshake_timeout_ms"] == 10_000


def test_the_open_file_limit_is_raised_towards_the_cap() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ensure_descriptors(min(soft, 64)) >= min(soft, 64)  # already enough: unchanged
    if hard != resource.RLIM_INFINITY and soft < hard:
        assert ensure_descriptors(hard) == hard
