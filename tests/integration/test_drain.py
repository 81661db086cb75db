"""Graceful drain on SIGTERM (gateway/drain.py): `llmserve up` over simulated workers, and the V2 runtime.

SIGTERM with streams in flight: new requests are refused at once, the streams run to their end, the process exits
within the drain timeout + 5 s and leaves no replica behind. With a drain of 0 the streams are cut at once, each with
one error frame (never mid-event) and `[DONE]`. Time bounds are generous (a loaded machine delays, it never hurries).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmserve.workers.processes import group_members
from tests.support.raw_http import RawConnection, parse_response, request_head
from tests.support.up import llmserve_up, sim_service
from tests.support.v2_models import sklearn_iris
from tests.support.v2_runtime import runtime_process
from tests.support.waiting import eventually

SLACK_S = 5.0  # the bound: exit within the drain timeout + 5 s
LATE_S = 6.0  # how late a loaded machine may be on top of a bound
SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    minReplicas: 2
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2"]
"""


@dataclass
class Stream:
    """One streamed chat completion read in a thread: its SSE data lines, and how it ended."""

    url: str
    max_tokens: int
    lines: list[str] = field(default_factory=list)
    status: int = 0
    failure: str | None = None
    first: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": self.max_tokens, "ignore_eos": True}  # fmt: skip
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, timeout=120) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line)
                        self.first.set()
        except httpx.HTTPError as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.first.set()
            self.ended.set()

    @property
    def errors(self) -> list[dict[str, object]]:
        return [json.loads(line[6:])["error"] for line in self.lines if line.startswith('data: {"error"')]

    @property
    def tokens(self) -> int:
        """Content chunks (the role chunk that opens a chat stream has no text)."""
        return sum(1 for line in self.lines if '"delta":{"content":' in line)


def refused(url: str) -> bool:
    """A new request is not served: the connection is refused, or the answer is 503."""
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 503
    except httpx.TransportError:
        return True


def test_sigterm_lets_streams_in_flight_finish_and_refuses_new_requests(tmp_path: Path) -> None:
    drain_s = 20.0
    with llmserve_up(sim_service(tmp_path, SERVICE), tmp_path, "--drain-timeout", str(drain_s)) as up:
        up.wait(lambda: up.service("sim")["ready_replicas"] == 2, 60, "two replicas")
        pids = up.replica_pids()
        streams = [Stream(up.url, max_tokens=40).start() for _ in range(10)]
        assert all(s.first.wait(60) for s in streams), [s.failure for s in streams]
        assert not any(s.ended.is_set() for s in streams), "a stream ended before SIGTERM: make them longer"
        signalled = time.monotonic()
        up.process.send_signal(signal.SIGTERM)
        assert eventually(lambda: refused(up.url), 1 + LATE_S), "new requests still served"
        for stream in streams:
            assert stream.ended.wait(drain_s + LATE_S)
        code = up.process.wait(drain_s + SLACK_S + LATE_S)
        exited = time.monotonic()
    for stream in streams:
        assert (stream.status, stream.failure, stream.errors) == (200, None, [])
        assert stream.lines[-1] == "data: [DONE]"
        assert stream.tokens == 40  # every token, none cut
    assert code == 0, up.tail()
    assert exited - signalled <= drain_s + SLACK_S + LATE_S
    assert not {pid: group_members(pid) for pid in pids if group_members(pid)}, "replicas left behind"


def test_a_drain_of_zero_cuts_streams_with_one_error_frame(tmp_path: Path) -> None:
    with llmserve_up(sim_service(tmp_path, SERVICE), tmp_path, "--drain-timeout", "0") as up:
        up.wait(lambda: up.service("sim")["ready_replicas"] == 2, 60, "two replicas")
        pids = up.replica_pids()
        streams = [Stream(up.url, max_tokens=1500).start() for _ in range(10)]  # minutes long
        assert all(s.first.wait(60) for s in streams), [s.failure for s in streams]
        signalled = time.monotonic()
        up.process.send_signal(signal.SIGTERM)
        for stream in streams:
            assert stream.ended.wait(4 + LATE_S)
        code = up.process.wait(4 + LATE_S)
        exited = time.monotonic()
    for stream in streams:
        assert (stream.status, stream.failure) == (200, None)
        assert [e["code"] for e in stream.errors] == ["shutting_down"]
        assert stream.lines[-2].startswith('data: {"error"')  # the error frame is the last event, then [DONE]
        assert stream.lines[-1] == "data: [DONE]"
        assert all(line == "data: [DONE]" or json.loads(line[6:]) for line in stream.lines)  # whole events only
    assert code == 0, up.tail()
    assert exited - signalled <= 4 + LATE_S
    assert not {pid: group_members(pid) for pid in pids if group_members(pid)}, "replicas left behind"


def test_the_v2_runtime_drains_on_sigterm(tmp_path: Path) -> None:
    """Ten requests held by the adaptive batcher (it waits 3 s for more rows) when SIGTERM comes: every one is
    answered, new connections are refused, the process exits."""
    iris = sklearn_iris(tmp_path / "iris")
    drain_s = 15.0
    args = ["--model", f"iris={iris.path}:sklearn", "--max-batch-size", "64", "--max-latency-ms", "3000",
            "--drain-timeout", str(drain_s)]  # fmt: skip
    body = json.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": iris.x[0].tolist()}]}
    ).encode()
    head = request_head(
        "POST", "/v2/models/iris/infer", [("content-type", "application/json"), ("content-length", str(len(body)))]
    )
    with runtime_process(args, tmp_path / "runtime.log") as runtime:
        requests = [RawConnection(runtime.url) for _ in range(10)]
        for conn in requests:
            assert conn.send(head + body)
        # A fence: a request sent after the ten were; once it is answered, the server has read them all.
        with RawConnection(runtime.url) as fence:
            fence.send(request_head("GET", "/v2/health/live"))
            assert fence.read_response().status == 200
        assert not any(conn.wait_data(0.01) for conn in requests), "answered before SIGTERM: the batcher did not wait"
        signalled = time.monotonic()
        runtime.process.send_signal(signal.SIGTERM)
        assert eventually(lambda: refused_v2(runtime.url), 1 + LATE_S), "new connections still served"
        answers = []
        for conn in requests:
            raw = conn.read_to_end(drain_s + LATE_S)
            assert raw is not None, "a request in flight was not answered"
            answers.append(parse_response(raw))
            conn.close()
        try:
            code = runtime.process.wait(drain_s + SLACK_S + LATE_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the runtime did not exit: {runtime.log.read_text()[-2000:]}") from None
        exited = time.monotonic()
    assert [a.status for a in answers] == [200] * 10
    assert all(json.loads(a.body)["outputs"] for a in answers)
    assert code == 0
    assert exited - signalled <= drain_s + SLACK_S + LATE_S


def refused_v2(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 503
    except httpx.TransportError:
        return True
