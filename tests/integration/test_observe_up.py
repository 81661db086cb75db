"""Observing a running `llmserve up` end to end: the status page on the gateway in a real headless Chromium (0 ->
1 replica as a request wakes a scale-from-zero service), tracing with --otlp-endpoint (the gateway's spans at an
OTLP collector, its traceparent at the simulated worker, which got --otlp-traces-endpoint too), `llmserve status`
and `llmserve logs`, and the ready hint of a predictive service (a /v2 infer call that is answered).

With LLMSERVE_SCREENSHOTS=DIR the page's screenshot is also copied to DIR/screenshot.png (how
configs/observability/screenshot.png was made).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.support import v2_models
from tests.support.chromium import chromium_page
from tests.support.otlp import OtlpCollector
from tests.support.servers import ServerThread, serving
from tests.support.up import Up, llmserve_up, sim_service
from tests.support.waiting import eventually

KEY = "observe-key"
SERVICES = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: chat
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 1
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2"]
---
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
    model:
      modelFormat: {{name: sklearn}}
      storageUri: file://{iris_dir}
"""


@dataclass
class Observed:
    up: Up
    collector: OtlpCollector
    collector_server: ServerThread
    work: Path

    def chat(self, content: str, max_tokens: int = 8, **extra: object) -> httpx.Response:
        body = {"model": "chat", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
        return httpx.post(f"{self.up.url}/v1/chat/completions", json={**body, **extra}, headers=self.up.headers,
                          timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    work = tmp_path_factory.mktemp("observe-up")
    iris = v2_models.sklearn_iris(work / "iris")
    config = sim_service(work, SERVICES.replace("{iris_dir}", str(iris.path)))
    collector = OtlpCollector()
    with serving(collector) as server:
        os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"  # inherited by `llmserve up`
        try:
            with llmserve_up(config, work, "--otlp-endpoint", f"{server.url}/v1/traces", api_key=KEY) as up:
                up.wait(lambda: up.service("iris")["ready_replicas"] == 1, 60, "iris ready")
                yield Observed(up, collector, server, work)
        finally:
            os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", None)


def test_the_status_page_shows_a_service_going_from_0_to_1_replica(observed: Observed) -> None:
    up = observed.up
    assert httpx.get(f"{up.url}/ui/", timeout=10).status_code == 200  # the page holds no data: public
    assert httpx.get(f"{up.url}/ui/status", timeout=10).status_code == 401  # its status is not
    chat = '[data-service="chat"]'
    with chromium_page() as page:
        page.open(f"{up.url}/ui/")
        page.wait_for("document.querySelector('#connection').textContent === 'needs an API key'")
        page.evaluate(f"document.querySelector('#key-input').value = '{KEY}'; "
                      "document.querySelector('#key button').click(); true")  # fmt: skip
        page.wait_for(f"document.querySelector('{chat} [data-field=ready]')?.textContent === '0/0'")
        assert page.text(f"{chat} [data-field=no-replicas]") == "no replicas"

        woken: list[httpx.Response] = []
        waker = threading.Thread(target=lambda: woken.append(observed.chat("Wake up, please.")))
        waker.start()  # the first request: held while the controller starts chat's first replica
        page.wait_for(f"document.querySelector('{chat} [data-field=ready]')?.textContent === '1/1'", timeout_s=60)
        waker.join(60)
        assert woken
        assert woken[0].status_code == 200
        page.wait_for(f"document.querySelector('{chat} [data-field=state]')?.textContent === 'ready'")

        streaming = threading.Thread(target=lambda: observed.chat("Tell me a long story.", max_tokens=80))
        streaming.start()  # in flight while the page shows it
        page.wait_for(f"(document.querySelector('{chat} [data-replica]')?.textContent || '').includes('1 in flight')")
        assert "iris" in (page.text('[data-service="iris"] h2') or "")
        shot = page.screenshot(observed.work / "status-page.png")
        streaming.join(60)
        unexpected = [e for e in page.errors if "status of 401" not in e]  # the first, keyless try
        assert unexpected == [], page.errors
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("LLMSERVE_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["LLMSERVE_SCREENSHOTS"]) / "screenshot.png")


def test_traces_reach_the_collector_and_the_traceparent_reaches_the_worker(observed: Observed) -> None:
    up = observed.up
    assert observed.chat("Trace me.").status_code == 200
    replica = next(r for r in up.replicas("chat") if r["state"] == "ready")
    worker = httpx.get(f"{replica['url']}/sim/traceparents", timeout=10).json()
    assert worker["otlp_traces_endpoint"] == f"{observed.collector_server.url}/v1/traces"  # the controller passed it
    at_worker = worker["requests"][-1]["traceparent"].split("-")  # 00-trace-span-flags
    spans = observed.collector.spans  # the gateway's batch exporter sends every few seconds
    assert eventually(lambda: any(s.span_id == at_worker[2] for s in spans), within_s=30), spans
    upstream = next(s for s in spans if s.span_id == at_worker[2])
    assert (upstream.name, upstream.trace_id, upstream.service) == ("upstream", at_worker[1], "llmserve-gateway")
    request = next(s for s in spans if s.span_id == upstream.parent_span_id)
    assert request.name == "chat_completions"
    assert request.attributes["llmserve.service"] == "chat"


def llmserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmserve", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)  # fmt: skip


def test_status_and_logs_on_the_command_line(observed: Observed) -> None:
    up = observed.up
    assert observed.chat("Warm.").status_code == 200
    client = ["--controller", up.control_url, "--state-dir", str(up.state_dir)]
    plain = llmserve("status", *client)
    assert plain.returncode == 0, plain.stderr
    assert "SERVICE" in plain.stdout
    assert "REPLICA" in plain.stdout
    assert "gateways reporting: 1" in plain.stdout
    through = llmserve("status", *client, "--gateway", up.url, "--api-key", KEY)
    assert through.returncode == 0, through.stderr
    assert "0 in flight" in through.stdout  # the gateway's ledger, per replica
    as_json = json.loads(llmserve("status", *client, "--gateway", up.url, "--api-key", KEY, "-o", "json").stdout)
    assert {s["name"] for s in as_json["services"]} == {"chat", "iris"}

    logs = llmserve("logs", "chat", "--log-dir", str(observed.work / "logs"), *client)
    assert logs.returncode == 0, logs.stderr
    assert "llmserve sim: chat on http://" in logs.stdout
    missing = llmserve("logs", "nothing", "--log-dir", str(observed.work / "logs"), *client)
    assert missing.returncode == 1
    assert "no log for 'nothing'" in missing.stderr


def test_the_ready_hint_of_a_predictive_service_is_an_infer_call_that_works(observed: Observed) -> None:
    up = observed.up
    assert eventually(lambda: "'iris' is ready (Open Inference Protocol)" in up.log.read_text(), within_s=30)
    lines = up.log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "'iris' is ready" in line)
    curl = shlex.split(next(line for line in lines[start:] if line.strip().startswith("curl")))
    assert curl[1] == f"{up.url}/v2/models/iris/infer"
    assert "authorization: Bearer <your key>" in curl
    body = json.loads(curl[curl.index("-d") + 1])
    answer = httpx.post(curl[1], json=body, headers=up.headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]
