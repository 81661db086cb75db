"""Payload logging end to end: `llmserve up` (with an API key) in front of simulated vLLM workers, services whose
`spec.logger` names a recording HTTP sink and a JSONL file, or a sink that never answers. Streams reach the client
as before and are logged once, as received, after the client got them; a hanging sink delays nothing; neither the
API key nor the authorization header is ever logged."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from gateway.payload_log import REQUEST_TYPE, RESPONSE_TYPE
from tests.support.servers import ServerThread, serving
from tests.support.sinks import HangingSink, RecordingSink
from tests.support.up import Up, llmserve_up
from tests.support.waiting import eventually

KEY = "sk-e2e-payload-key-0042"
SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {{name: {name}, annotations: {{team: search}}}}
spec:
  predictor:
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--speed", "5", "--output-tokens", "12"]
{logger}"""
LOGGED = """\
  logger:
    url: {url}
    file: {file}
    metadataHeaders: [x-tenant]
    metadataAnnotations: [team]
"""


class Order:
    """What happened, in order, across the client (test thread) and the sink (its server thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[str] = []

    def note(self, what: str) -> None:
        with self.lock:
            self.seen.append(what)


@pytest.fixture(scope="module")
def order() -> Order:
    return Order()


@pytest.fixture(scope="module")
def sink(order: Order) -> Iterator[tuple[RecordingSink, ServerThread]]:
    recording = RecordingSink(on_event=lambda headers, _: order.note(f"sink got {headers['ce-type']}"))
    with serving(recording) as server:
        yield recording, server


@pytest.fixture(scope="module")
def hanging() -> Iterator[HangingSink]:
    stuck = HangingSink()
    yield stuck
    stuck.close()


@pytest.fixture(scope="module")
def up(
    sink: tuple[RecordingSink, ServerThread], hanging: HangingSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("payload-log")
    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    logged = LOGGED.format(url=f"{sink[1].url}/events", file=work / "events.jsonl")
    stuck = f"  logger: {{url: {hanging.url}}}\n"
    config = work / "services.yaml"
    config.write_text(
        "---\n".join(
            SERVICE.format(name=name, model_dir=model_dir, logger=logger)
            for name, logger in (("logged", logged), ("stuck", stuck), ("quiet", ""))
        )
    )
    with llmserve_up(config, work, api_key=KEY) as running:
        running.wait(lambda: all(s["ready_replicas"] == 1 for s in running.services()), 60, "services ready")
        yield running


def stream(up: Up, model: str, order: Order | None = None, reads: list[int] | None = None) -> tuple[bytes, str]:
    """A streamed chat request carrying the key (header and prompt); what the client received, and the request's
    id. `order` notes when the first chunk and the end arrived; `reads` gets how many reads the body took."""
    body = {"model": model, "stream": True, "max_tokens": 12,
            "messages": [{"role": "user", "content": f"my key is {KEY}"}]}  # fmt: skip
    headers = {"authorization": f"Bearer {KEY}", "x-tenant": "acme"}
    received = b""
    with httpx.stream("POST", f"{up.url}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        count = 0
        for chunk in response.iter_raw():
            if order is not None and not received:
                order.note(f"client got the first chunk of {model}")
            received += chunk
            count += 1
        request_id = response.headers["x-request-id"]
    if reads is not None:
        reads.append(count)
    if order is not None:
        order.note(f"client got the end of {model}")
    assert received.endswith(b"data: [DONE]\n\n")
    return received, request_id


def test_a_stream_is_logged_once_as_received_after_the_client_got_it(
    up: Up, sink: tuple[RecordingSink, ServerThread], order: Order
) -> None:
    recording, _ = sink
    reads: list[int] = []
    quiet, _ = stream(up, "quiet", order, reads)  # logging off
    received, request_id = stream(up, "logged", order, reads)  # logging on
    assert eventually(lambda: sum(h["ce-id"] == request_id for h, _ in recording.events) == 2, within_s=10)
    assert order.seen[:2] == ["client got the first chunk of quiet", "client got the end of quiet"]
    on = order.seen[2:]
    # The response is logged once the gateway has sent all of it (the sink may hear of it before this client's
    # thread notes its last read: the two race after the last send); nothing of the stream waits for the logger:
    # it arrives piece by piece as the worker generates it, logging on as off (a logger that buffered the stream
    # would hand the client one piece at the end).
    first, end = on.index("client got the first chunk of logged"), on.index("client got the end of logged")
    assert first < end
    assert first < on.index(f"sink got {RESPONSE_TYPE}")
    assert min(reads) > 1, reads
    assert quiet.count(b"data: ") == received.count(b"data: ")  # the same stream, logging on or off
    events = {h["ce-type"]: (h, b) for h, b in recording.events if h["ce-id"] == request_id}
    request_headers, request_body = events[REQUEST_TYPE]
    response_headers, response_body = events[RESPONSE_TYPE]
    assert response_body == received  # exactly what the client received, logged once
    assert json.loads(request_body)["messages"][0]["content"] == "my key is [REDACTED]"
    for headers in (request_headers, response_headers):
        assert headers["ce-source"] == "/llmserve/default/logged/predictor"
        assert (headers["ce-inferenceservicename"], headers["ce-model"]) == ("logged", "logged")
        assert headers["ce-endpoint"] == "logged-00001"  # the revision that answered
        assert json.loads(unquote(headers["ce-metadata"])) == {"x-tenant": ["acme"]}
        assert json.loads(unquote(headers["ce-annotations"])) == {"team": "search"}
    assert response_headers["ce-statuscode"] == "200"
    assert response_headers["content-type"].startswith("text/event-stream")


def test_an_error_the_gateway_answers_is_logged_as_sent(up: Up, sink: tuple[RecordingSink, ServerThread]) -> None:
    recording, _ = sink
    headers = {"authorization": f"Bearer {KEY}", "x-llmserve-revision": "logged-00042"}
    body = {"model": "logged", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{up.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 404
    request_id = answer.headers["x-request-id"]
    assert eventually(lambda: sum(h["ce-id"] == request_id for h, _ in recording.events) == 2, within_s=10)
    (response,) = [b for h, b in recording.events if h["ce-id"] == request_id and h["ce-type"] == RESPONSE_TYPE]
    assert response == answer.content


def test_a_hanging_sink_delays_nothing(up: Up, hanging: HangingSink) -> None:
    for _ in range(10):
        received, _ = stream(up, "stuck")
        assert received.count(b"data: ") >= 12
    assert eventually(lambda: b"ce-type" in hanging.received, within_s=10)  # the logger did try, and still waits
    metrics = httpx.get(f"{up.url}/metrics", timeout=10).text
    assert f'outcome="sent",sink="{hanging.url}"' not in metrics


def test_the_key_and_the_authorization_header_are_never_logged(
    up: Up, sink: tuple[RecordingSink, ServerThread]
) -> None:
    recording, _ = sink
    stream(up, "logged")
    assert eventually(lambda: len(recording.events) >= 2, within_s=10)
    everything = json.dumps([[headers, body.decode()] for headers, body in recording.events])
    assert KEY not in everything
    assert "Bearer" not in everything
    assert "authorization" not in everything.lower()
    files = list(Path(up.log).parent.glob("events.jsonl"))
    assert files, "the JSONL sink was written"
    text = files[0].read_text()
    assert KEY not in text
    assert "Bearer" not in text
    assert all(json.loads(line)["inferenceservicename"] == "logged" for line in text.splitlines())
