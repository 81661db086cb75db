"""Connection limits at the front door (llmserve/frontdoor.py) on every listening port of the project: the gateway's
and the control API's (a real `llmserve up`, flags on its command line) and the V2 runtime's (its own process).
Deadlines here are short (1.5 s) so the tests are quick; each is checked from both sides with event waits: the
connection is still open shortly before the deadline, and it is answered and closed by a generous bound after it (a
loaded machine delays a timer, it never fires early)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from llmserve.frontdoor import FrontDoorSettings
from tests.support.raw_http import RawConnection, parse_response, request_head
from tests.support.up import Up, llmserve_up, sim_service
from tests.support.v2_runtime import runtime_process
from tests.support.waiting import eventually

DEADLINE_S = 1.5
LIMITS = FrontDoorSettings(
    max_header_bytes=16 * 1024,
    max_header_count=20,
    header_timeout_s=DEADLINE_S,
    body_idle_timeout_s=DEADLINE_S,
    max_connections=4,
)
LATE_S = 6.0  # generous: how late after its deadline a refusal may come on a loaded machine
FLAGS = [
    "--max-header-bytes", str(LIMITS.max_header_bytes), "--max-header-count", str(LIMITS.max_header_count),
    "--header-timeout", str(DEADLINE_S), "--body-idle-timeout", str(DEADLINE_S),
    "--max-connections", str(LIMITS.max_connections),
]  # fmt: skip
# A simulated worker whose every engine step takes 2.5 s: a stream with gaps longer than both deadlines.
SLOW_SIM = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: slow
spec:
  predictor:
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2", "--step-floor-ms", "2500"]
"""


@dataclass
class Port:
    url: str
    get: str  # a cheap GET that answers 200
    post: str  # a POST that reads its body
    v2_envelope: bool  # errors are {"error": "..."} (else OpenAI's envelope)
    grpc_port: int = 0
    auth: list[tuple[str, str]] = field(default_factory=list)  # what the POST needs to be read


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("front-door-up")
    with llmserve_up(sim_service(work, SLOW_SIM), work, *FLAGS) as running:
        running.wait(lambda: running.service("slow")["ready_replicas"] == 1, 60, "the simulated replica")
        yield running


@pytest.fixture(scope="module")
def gateway_port(up: Up) -> Port:
    return Port(up.url, "/health", "/v1/chat/completions", v2_envelope=False)


@pytest.fixture(scope="module")
def control_port(up: Up) -> Port:
    token = up.control_headers["authorization"]
    return Port(up.control_url, "/health", "/control/v1/demand", v2_envelope=True, auth=[("authorization", token)])


@pytest.fixture(scope="module")
def runtime_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Port]:
    work = tmp_path_factory.mktemp("front-door-runtime")
    (work / "models").mkdir()
    with runtime_process(["--model-repository", str(work / "models"), *FLAGS], work / "runtime.log") as runtime:
        yield Port(
            runtime.url, "/v2/health/live", "/v2/models/none/infer", v2_envelope=True, grpc_port=runtime.grpc_port
        )


@pytest.fixture(params=["gateway", "control-api", "v2-runtime"])
def port(request: pytest.FixtureRequest) -> Port:
    fixture = {"gateway": "gateway_port", "control-api": "control_port", "v2-runtime": "runtime_port"}[request.param]
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def error_message(port: Port, body: object) -> str:
    assert isinstance(body, dict)
    if port.v2_envelope:
        assert isinstance(body["error"], str)
        return body["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return str(body["error"]["message"])


def test_a_head_within_the_limits_is_served(port: Port) -> None:
    headers = [(f"x-h{i}", "v" * 500) for i in range(LIMITS.max_header_count - 1)]  # + host = the limit
    assert len(request_head("GET", port.get, headers)) < LIMITS.max_header_bytes
    with RawConnection(port.url) as conn:
        conn.send(request_head("GET", port.get, headers))
        assert conn.read_response().status == 200
        conn.send(request_head("GET", port.get))  # the same connection serves the next request
        assert conn.read_response().status == 200


def test_too_many_headers_get_431(port: Port) -> None:
    headers = [(f"x-h{i}", "v") for i in range(LIMITS.max_header_count)]  # + host: one too many
    with RawConnection(port.url) as conn:
        conn.send(request_head("GET", port.get, headers))
        raw = conn.read_to_end(LATE_S)
    assert raw is not None, "the connection stayed open"
    response = parse_response(raw)
    assert response.status == 431
    assert response.headers["connection"] == "close"
    assert "more than 20 headers" in error_message(port, response.json())


def test_a_huge_header_gets_431_before_the_rest_is_read(port: Port) -> None:
    with RawConnection(port.url) as conn:
        # 1 MiB of one header value is announced; after 20 KiB (over the 16 KiB limit) the server must answer
        # without waiting for the rest, which never comes.
        conn.send(f"GET {port.get} HTTP/1.1\r\nhost: test\r\nx-big: ".encode())
        conn.send(b"x" * (20 * 1024))
        raw = conn.read_to_end(LATE_S)
    assert raw is not None, "the server waited for the rest of the header"
    response = parse_response(raw)
    assert response.status == 431
    assert "larger than the limit of 16384 bytes" in error_message(port, response.json())


def test_slowloris_head_is_cut_at_the_header_deadline(port: Port) -> None:
    head = request_head("GET", port.get, [("x-slow", "y" * 20)])
    with RawConnection(port.url) as conn:
        for byte in head[:-1]:  # one byte at a time, a pause after each: the head never completes in time
            if not conn.send(bytes([byte])) or conn.wait_data(1.0):
                break
        answered_after = (conn.eof_at or time.monotonic()) - conn.opened_at
        raw = conn.read_to_end(LATE_S)
    assert raw is not None, "the slow head was never cut"
    assert parse_response(raw).status == 408
    assert answered_after >= DEADLINE_S - 0.05, "cut before the deadline"  # a timer never fires early
    assert answered_after <= DEADLINE_S + LATE_S


def test_a_body_that_stops_is_cut_at_the_idle_deadline(port: Port) -> None:
    head = request_head(
        "POST", port.post, [("content-type", "application/json"), ("content-length", "100000"), *port.auth]
    )
    with RawConnection(port.url) as conn:
        conn.send(head)
        # A fast enough body keeps coming for longer than the deadline, each part within it: the connection stays.
        trickle_until = time.monotonic() + DEADLINE_S * 1.5
        while True:
            assert conn.send(b" " * 400)  # 400 bytes every DEADLINE_S / 3: 800 B/s, over the 500 B/s minimum
            last_byte = time.monotonic()
            if last_byte > trickle_until:
                break
            assert not conn.wait_data(DEADLINE_S / 3), f"cut while bytes were arriving: {conn.received[:200]!r}"
        assert not conn.wait_data(DEADLINE_S - 0.5), "cut before the idle deadline"
        raw = conn.read_to_end(LATE_S)
    assert raw is not None, "the stalled body was never cut"
    assert conn.eof_at is not None
    assert conn.eof_at - last_byte >= DEADLINE_S - 0.05
    response = parse_response(raw)
    assert response.status == 408
    assert "No request body bytes arrived" in error_message(port, response.json())


def test_a_body_trickled_byte_by_byte_is_cut(port: Port) -> None:
    """The issue's slow client: a byte every few tenths of a second is never idle long, but far below 500 B/s."""
    head = request_head(
        "POST", port.post, [("content-type", "application/json"), ("content-length", "100000"), *port.auth]
    )
    with RawConnection(port.url) as conn:
        conn.send(head)
        began = time.monotonic()
        while conn.send(b" ") and not conn.wait_data(DEADLINE_S / 5):
            if time.monotonic() - began > DEADLINE_S + LATE_S:
                break
        raw = conn.read_to_end(LATE_S)
    assert raw is not None, "the trickling body was never cut"
    assert conn.eof_at is not None
    assert conn.eof_at - began >= DEADLINE_S - 0.05  # the grace is the idle deadline
    response = parse_response(raw)
    assert response.status == 408
    assert "slower than 500 bytes/s" in error_message(port, response.json())


def test_a_kept_alive_connection_may_idle_between_requests(port: Port) -> None:
    """The header deadline of a later request counts from its first byte, not from the previous response."""
    with RawConnection(port.url) as conn:
        conn.send(request_head("GET", port.get))
        assert conn.read_response().status == 200
        assert not conn.wait_data(DEADLINE_S + 1.0)  # idle past the header deadline (within uvicorn's keep-alive)
        conn.send(request_head("GET", port.get))
        assert conn.read_response().status == 200


def test_connections_beyond_the_cap_get_503_at_once(port: Port) -> None:
    """Connections are admitted up to the cap (fewer on the control API: the gateway's own watch holds one), the
    next one gets 503 at once; once one closes, a new one is admitted."""
    with ExitStack() as stack:
        held: list[RawConnection] = []
        refused = None
        for _ in range(LIMITS.max_connections + 1):
            conn = stack.enter_context(RawConnection(port.url))
            conn.send(request_head("GET", port.get))
            response = conn.read_response()
            if response.status != 200:
                refused = response
                break
            held.append(conn)  # a served request on each: the server has surely counted it
        assert refused is not None, f"{len(held)} connections admitted, over the cap of {LIMITS.max_connections}"
        assert 1 <= len(held) <= LIMITS.max_connections
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert "too many open connections" in error_message(port, refused.json())
        held.pop().close()

        def admitted() -> bool:
            with RawConnection(port.url) as again:
                again.send(request_head("GET", port.get))
                return again.read_response().status == 200

        assert eventually(admitted, 5)


def test_a_long_stream_is_not_cut(gateway_port: Port) -> None:
    """An SSE stream through the gateway whose chunks come 2.5 s apart (longer than both deadlines) runs to its
    end."""
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 2}
    with httpx.stream("POST", f"{gateway_port.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert len([line for line in lines if '"delta"' in line]) >= 2


def test_the_cli_validates_the_limits(tmp_path: Path) -> None:
    for command in (["llmserve", "gateway"], ["llmserve", "controller"], ["llmserve", "up"]):
        out = subprocess.run(
            [sys.executable, "-m", *command, "--max-header-count", "0"],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 2, command
        assert "max_header_count" in out.stderr, command


def test_the_runtime_cli_validates_the_limits(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmserve.runtimes.server", "--model-repository", str(tmp_path), "--max-header-count",
         "0", "--port", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "max_header_count" in out.stderr


def test_the_runtime_grpc_port_bounds_metadata(runtime_port: Port) -> None:
    """grpcio's metadata limits, set explicitly from the same settings (grpc_server_options): a call with more
    than max_header_bytes of metadata is refused, one within it is always served (grpcio's default soft limit,
    8 KiB, would refuse 12 KiB about half the time)."""
    import grpc

    from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb

    target = f"127.0.0.1:{runtime_port.grpc_port}"
    with grpc.insecure_channel(target) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        for _ in range(20):
            assert live(pb.ServerLiveRequest(), timeout=30, metadata=[("x-within", "v" * 12 * 1024)]).live
        with pytest.raises(grpc.RpcError) as refused:
            live(pb.ServerLiveRequest(), timeout=30, metadata=[("x-big", "v" * (LIMITS.max_header_bytes + 1024))])
    assert refused.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
