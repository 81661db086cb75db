"""Sending a graph's answer to the client: whole bodies, streams, errors before and after the answer started,
and a client that goes away."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.graph import GraphRouter
from gateway.graph.asgi import GraphApp, answer_client
from gateway.graph.steps import StepAnswer
from llmserve.protocol.errors import ServingError
from tests.support.waiting import until
from tests.unit.gateway.graph.fakes import FakeCaller, GatedStream, graph, never, replies

SWITCH = {"root": {"routerType": "Switch", "steps": [{"serviceName": "a", "condition": "x", "stream": True}]}}
SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/graphs/g", "headers": []}


class Client:
    """The ASGI client side: what was sent, and a receive() that disconnects when told."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def test_a_whole_answer() -> None:
    client = Client()
    router = GraphRouter(graph(SWITCH), FakeCaller({"a": replies({"ok": 1})}))
    assert await answer_client(router, b'{"x": 1}', SCOPE, client.receive, client.send) == 200
    assert (client.status, orjson.loads(client.body)) == (200, {"ok": 1})


NO_MATCH = "None of the routes matched with the switch condition"
OPENAI_NO_MATCH = {"message": NO_MATCH, "type": "invalid_request_error", "param": None, "code": "no_route_matched"}


@pytest.mark.parametrize(
    ("style", "expected"),
    [("graph", {"error": "Failed to process request", "cause": NO_MATCH}), ("openai", {"error": OPENAI_NO_MATCH})],
)
async def test_errors_before_the_answer_in_either_envelope(style: Any, expected: dict[str, Any]) -> None:
    client = Client()
    router = GraphRouter(graph(SWITCH), FakeCaller({"a": replies({})}))
    assert await answer_client(router, b'{"y": 1}', SCOPE, client.receive, client.send, errors=style) == 404
    assert (client.status, orjson.loads(client.body)) == (404, expected)


async def test_a_stream_is_relayed_and_a_failure_mid_stream_is_one_error_frame() -> None:
    async def failing() -> Any:
        yield b'data: {"n": 1}\n\n'
        raise ServingError.upstream_failure("the worker closed the connection")

    async def handler(body: bytes) -> StepAnswer:
        return StepAnswer(200, [(b"content-type", b"text/event-stream")], failing())

    client = Client()
    router = GraphRouter(graph(SWITCH), FakeCaller({"a": handler}))
    await answer_client(router, b'{"x": 1}', SCOPE, client.receive, client.send)
    assert client.status == 200
    assert (b"content-type", b"text/event-stream") in client.sent[0]["headers"]
    frames = client.body.split(b"\n\n")
    assert frames[0] == b'data: {"n": 1}'
    assert orjson.loads(frames[1].removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    assert frames[2] == b"data: [DONE]"
    assert client.sent[-1]["more_body"] is False


async def test_a_client_that_goes_away_cancels_the_graph_and_closes_the_stream() -> None:
    stream = GatedStream([b"data: 1\n\n", b"data: 2\n\n"])
    client = Client()
    router = GraphRouter(graph(SWITCH), FakeCaller({"a": stream.handler()}))
    task = asyncio.create_task(answer_client(router, b'{"x": 1}', SCOPE, client.receive, client.send))
    stream.release()
    await until(lambda: len(client.sent) >= 2)
    client.gone.set()
    assert await task == 499
    assert stream.closed


async def test_a_client_that_goes_away_before_the_answer_cancels_the_steps() -> None:
    client = Client()
    caller = FakeCaller({"a": never})
    task = asyncio.create_task(answer_client(GraphRouter(graph(SWITCH), caller), b'{"x": 1}', SCOPE, client.receive,
                                             client.send))  # fmt: skip
    await until(lambda: bool(caller.calls))
    client.gone.set()
    assert await task == 499
    assert caller.cancelled == ["a"]
    assert client.sent == []


async def test_the_app_routes_by_graph_name() -> None:
    app = GraphApp({"g": GraphRouter(graph(SWITCH), FakeCaller({"a": replies({"ok": 1})}))})
    for method, path, status in (("POST", "/v1/graphs/nope", 404), ("GET", "/v1/graphs/g", 405)):
        client = Client()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}"}

        await app({**SCOPE, "method": method, "path": path}, receive, client.send)
        assert client.status == status
        assert orjson.loads(client.body)["error"] == "Failed to process request"
