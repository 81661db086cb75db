"""Payload logging over real HTTP: a streaming ASGI app that logs its exchanges (the way the gateway's relay will),
served by uvicorn, called by httpx; sinks are a real recording HTTP server and a server that never answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from gateway.asgi import Receive, Scope, Send, read_body
from gateway.payload_log import REQUEST_TYPE, RESPONSE_TYPE, ExchangeInfo, LogPolicy, PayloadLogger
from tests.support.servers import ServerThread, serving
from tests.support.sinks import HangingSink, RecordingSink
from tests.support.waiting import eventually

KEY = "sk-test-payload-key-42"
CHUNKS = [f'data: {{"n": {i}}}\n\n'.encode() for i in range(5)] + [b"data: [DONE]\n\n"]


class LoggedStream:
    """Streams CHUNKS for every POST and logs the exchange: the request body as read, the response through the
    logger's send wrapper."""

    def __init__(self, policy: LogPolicy, **logger: Any) -> None:
        self.policy = policy
        self.logger_args = logger
        self.logger: PayloadLogger | None = None
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.logger = PayloadLogger(**self.logger_args)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    assert self.logger is not None
                    await self.logger.close(timeout_s=0.5)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.logger is not None
        body = await read_body(scope, receive, 1 << 20)
        self.served += 1
        info = ExchangeInfo(request_id=f"req-{self.served}", service="chat", model="smol", revision="chat-00001")
        exchange = self.logger.begin(self.policy, info, scope["headers"], body)
        out = exchange.wrap(send) if exchange is not None else send
        try:
            await out(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for i, chunk in enumerate(CHUNKS):
                await out({"type": "http.response.body", "body": chunk, "more_body": i < len(CHUNKS) - 1})
        finally:
            if exchange is not None:
                exchange.close()


@pytest.fixture
def recording_sink() -> Iterator[tuple[RecordingSink, ServerThread]]:
    sink = RecordingSink()
    with serving(sink) as server:
        yield sink, server


def call(url: str, body: dict[str, Any]) -> bytes:
    headers = {"authorization": f"Bearer {KEY}", "x-tenant": "acme"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        return b"".join(response.iter_raw())


def test_events_reach_an_http_sink_as_binary_cloudevents(recording_sink: tuple[RecordingSink, ServerThread]) -> None:
    sink, sink_server = recording_sink
    policy = LogPolicy(url=f"{sink_server.url}/events", metadata_headers=frozenset({"x-tenant", "authorization"}))
    app = LoggedStream(policy, secrets=[KEY])
    with serving(app) as server:
        received = call(server.url, {"prompt": f"the key is {KEY}"})
        assert received == b"".join(CHUNKS)
        assert eventually(lambda: len(sink.events) == 2, within_s=10)
    by_type = {headers["ce-type"]: (headers, body) for headers, body in sink.events}
    request_headers, request_body = by_type[REQUEST_TYPE]
    response_headers, response_body = by_type[RESPONSE_TYPE]
    assert json.loads(request_body) == {"prompt": "the key is [REDACTED]"}
    assert response_body == received  # the stream, logged once, as the client got it
    for headers in (request_headers, response_headers):
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-id"] == "req-1"
        assert headers["ce-source"] == "/llmserve/default/chat/predictor"
        assert (headers["ce-inferenceservicename"], headers["ce-endpoint"]) == ("chat", "chat-00001")
        assert json.loads(unquote(headers["ce-metadata"])) == {"x-tenant": ["acme"]}  # percent-encoded '"'
    assert response_headers["content-type"] == "text/event-stream"
    assert response_headers["ce-statuscode"] == "200"
    everything = json.dumps([[h, b.decode()] for h, b in sink.events])
    assert KEY not in everything
    assert "Bearer" not in everything


def test_a_hanging_sink_delays_nothing_and_drops_are_counted() -> None:
    hanging = HangingSink()
    try:
        app = LoggedStream(LogPolicy(url=hanging.url), queue_size=4, workers_per_sink=1, sink_timeout_s=60)
        with serving(app) as server:
            for i in range(10):  # each exchange: 2 events; 1 is stuck in the sink, 4 wait, the rest are dropped
                assert call(server.url, {"n": i}) == b"".join(CHUNKS)
            assert eventually(lambda: b"ce-type" in hanging.received, within_s=10)  # the logger did try
            assert app.logger is not None
            counts = app.logger.counts
            assert counts.get((hanging.url, "sent"), 0) == 0
            assert counts[(hanging.url, "dropped")] >= 20 - 1 - 4
    finally:
        hanging.close()
