"""Payload logging in-process, with the JSONL file sink: KServe's CloudEvents, modes, seeded sampling, secrets,
streams assembled from what the client got, the client's path ahead of the logger, bounded queues."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from gateway.asgi import Message
from gateway.payload_log import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    ExchangeInfo,
    LogPolicy,
    PayloadLogCollector,
    PayloadLogger,
)

KEY = "sk-live-0123456789"
HEADERS = [
    (b"authorization", f"Bearer {KEY}".encode()),
    (b"cookie", b"sid=1"),
    (b"x-api-key", KEY.encode()),
    (b"x-tenant", b"acme"),
    (b"content-type", b"application/json"),
]
INFO = ExchangeInfo(request_id="req-1", service="chat", model="smol", namespace="team", revision="chat-00002")


def policy(path: Path, **changes: Any) -> LogPolicy:
    return LogPolicy(file=str(path), metadata_headers=frozenset({"x-tenant"}), **changes)


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Client:
    """The ASGI send of a client: records what it received, and the order of everything."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            self.order.append(f"client got {message.get('body', b'')!r}")


async def respond(send: Any, status: int, content_type: bytes, chunks: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})


async def test_request_and_response_are_kserve_cloudevents(tmp_path: Path) -> None:
    sink = tmp_path / "log.jsonl"
    logger = PayloadLogger()
    exchange = logger.begin(policy(sink, annotations={"team": "ml"}), INFO, HEADERS, b'{"prompt": "hi"}')
    assert exchange is not None
    await respond(exchange.wrap(Client([]).send), 200, b"application/json", [b'{"choices": []}'])
    await logger.close()
    request, response = events(sink)
    for event in (request, response):
        assert event["specversion"] == "1.0"
        assert event["id"] == "req-1"  # the correlation between a request and its response
        assert event["source"] == "/llmserve/team/chat/predictor"
        assert (event["inferenceservicename"], event["namespace"], event["component"]) == ("chat", "team", "predictor")
        assert (event["endpoint"], event["model"]) == ("chat-00002", "smol")
        assert json.loads(event["metadata"]) == {"x-tenant": ["acme"]}
        assert json.loads(event["annotations"]) == {"team": "ml"}
        assert event["time"].endswith("Z")
    assert (request["type"], request["data"]) == (REQUEST_TYPE, {"prompt": "hi"})
    assert (response["type"], response["data"], response["statuscode"]) == (RESPONSE_TYPE, {"choices": []}, "200")
    assert "truncated" not in response
    assert "incomplete" not in response


async def test_a_stream_reaches_the_client_first_and_is_logged_once_as_received(tmp_path: Path) -> None:
    sink = tmp_path / "log.jsonl"
    logger = PayloadLogger()
    order: list[str] = []
    client = Client(order)
    exchange = logger.begin(policy(sink, mode="response"), INFO, HEADERS, b"{}")
    assert exchange is not None
    send = exchange.wrap(client.send)
    chunks = [b'data: {"n": 1}\n\n', b": keep-alive\n\n", b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        order.append(f"logged events: {len(events(sink))}")
    await logger.close()
    assert order[:2] == [f"client got {chunks[0]!r}", "logged events: 0"]  # first byte before any logging
    assert all(line == "logged events: 0" for line in order[1:-1:2])  # nothing is written mid-stream
    (response,) = events(sink)
    assert response["data"] == client.body.decode()  # exactly what the client received, once
    assert response["datacontenttype"] == "text/event-stream"


async def test_modes(tmp_path: Path) -> None:
    logger = PayloadLogger()
    only_requests = tmp_path / "requests.jsonl"
    assert logger.begin(policy(only_requests, mode="request"), INFO, HEADERS, b"{}") is None
    only_responses = tmp_path / "responses.jsonl"
    exchange = logger.begin(policy(only_responses, mode="response"), INFO, HEADERS, b"{}")
    assert exchange is not None
    await respond(exchange.wrap(Client([]).send), 200, b"application/json", [b"{}"])
    await logger.close()
    assert [e["type"] for e in events(only_requests)] == [REQUEST_TYPE]
    assert [e["type"] for e in events(only_responses)] == [RESPONSE_TYPE]


async def test_sampling_is_seeded_and_keeps_requests_with_their_responses(tmp_path: Path) -> None:
    sink = tmp_path / "log.jsonl"
    logger = PayloadLogger(rng=random.Random(0))
    for i in range(400):
        info = ExchangeInfo(request_id=f"r{i}", service="chat", model="smol")
        exchange = logger.begin(policy(sink, sample_rate=0.25), info, HEADERS, b"{}")
        if exchange is not None:
            await respond(exchange.wrap(Client([]).send), 200, b"application/json", [b"{}"])
    await logger.close()
    logged: dict[str, set[str]] = {}
    for event in events(sink):
        logged.setdefault(event["id"], set()).add(event["type"])
    assert 70 <= len(logged) <= 130
    assert all(types == {REQUEST_TYPE, RESPONSE_TYPE} for types in logged.values())


async def test_keys_and_credential_headers_never_appear_in_any_event(tmp_path: Path) -> None:
    sink = tmp_path / "log.jsonl"
    logger = PayloadLogger(secrets=[KEY])
    careless = LogPolicy(
        file=str(sink), metadata_headers=frozenset({"authorization", "cookie", "x-api-key", "x-tenant"})
    )
    body = json.dumps({"messages": [{"role": "user", "content": f"my key is {KEY}"}]}).encode()
    exchange = logger.begin(careless, INFO, HEADERS, body)
    assert exchange is not None
    await respond(
        exchange.wrap(Client([]).send),
        200,
        b"text/event-stream",
        [f"data: echo {KEY[:8]}".encode(), f"{KEY[8:]}\n\n".encode()],
    )
    await logger.close()
    text = sink.read_text()
    assert text.count("[REDACTED]") == 2  # in the request body and the response
    assert json.loads(events(sink)[0]["metadata"]) == {"x-tenant": ["acme"]}
    assert "sid=1" not in text
    # The key split across two chunks is whole again in the assembled response: redacted there too.
    assert KEY not in text
    assert events(sink)[1]["data"] == "data: echo [REDACTED]\n\n"


async def test_an_exchange_that_ends_early_is_logged_incomplete(tmp_path: Path) -> None:
    sink = tmp_path / "log.jsonl"
    logger = PayloadLogger(max_payload_bytes=20)
    exchange = logger.begin(policy(sink, mode="response"), INFO, HEADERS, b"{}")
    assert exchange is not None
    send = exchange.wrap(Client([]).send)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"data: 22222222222\n\n", "more_body": True})
    exchange.close()  # the client went away
    exchange.close()  # idempotent
    await logger.close()
    (response,) = events(sink)
    assert (response["incomplete"], response["truncated"], response["data"]) == ("true", "true", "data: 1\n\n")


async def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    sink = tmp_path / "log.jsonl"
    logger = PayloadLogger(queue_size=2)
    for i in range(5):  # no await in between: the writer cannot run, the queue fills
        logger.begin(policy(sink, mode="request"), ExchangeInfo(f"r{i}", "chat", "smol"), HEADERS, b"{}")
    await logger.close()
    target = f"file:{sink}"
    assert (logger.counts[(target, "sent")], logger.counts[(target, "dropped")]) == (2, 3)
    assert [e["id"] for e in events(sink)] == ["r0", "r1"]
    registry = CollectorRegistry()
    registry.register(PayloadLogCollector(logger))
    exposition = generate_latest(registry).decode()
    assert f'llmserve_payload_log_events_total{{outcome="dropped",sink="{target}"}} 3.0' in exposition
