"""The shipped Grafana dashboard and alert rules, proven on a real Prometheus.

Debian's `prometheus`, on loopback with configs/observability/prometheus.yml, scrapes a running `llmserve up`
(a simulated vLLM service and a scale-from-zero V2 service) and every worker directly; under live traffic every
PromQL expression of the dashboard and of the alert rules returns data. `promtool` checks the config and the
rules and runs the rules' own unit tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import v2_models
from tests.support.prometheus import (
    OBSERVABILITY,
    Prometheus,
    alert_signals,
    dashboard_queries,
    prometheus_on_loopback,
    promtool,
    scrape_config,
)
from tests.support.up import Up, llmserve_up, sim_service

SERVICES = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: chat
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 2
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2", "--speed", "20"]
---
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 1
    autoscaling: {{stableWindowSeconds: 4, panicWindowSeconds: 2, scaleToZeroGracePeriodSeconds: 2}}
    model:
      modelFormat: {{name: sklearn}}
      storageUri: file://{iris_dir}
"""

PENDING: dict[str, str] = {}
"""Series the dashboard shows that the gateway does not export yet (a fragment of the query -> what it needs):
their queries must have no data (so that this list cannot outlive them); once the gateway exports one, its entry
goes. Empty since the gateway exports the routing, inter-token, per-replica and per-revision series."""


def test_promtool_checks_the_shipped_config_and_rules() -> None:
    for args in (("check", "config", OBSERVABILITY / "prometheus.yml"),
                 ("check", "rules", OBSERVABILITY / "alerts.yml"),
                 ("test", "rules", OBSERVABILITY / "alerts_test.yml")):  # fmt: skip
        result = promtool(*args)
        assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"


def test_queries_parse_out_of_the_shipped_files() -> None:
    queries = dashboard_queries()
    assert len(queries) > 30
    assert any("vllm:prefix_cache_hits_total" in q for _, q in queries)
    signals = alert_signals()
    expected = {"LLMServeWorkerDown", "LLMServeHighErrorRate", "LLMServeTTFTHigh", "LLMServeActivatorQueueGrowing"}
    assert {name.removeprefix("alert ") for name, _ in signals} >= expected
    assert all(" bool " in q for _, q in signals)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    iris = v2_models.sklearn_iris(tmp_path / "iris")
    config = sim_service(tmp_path, SERVICES.replace("{iris_dir}", str(iris.path)))
    with llmserve_up(config, tmp_path) as running:
        running.wait(lambda: running.service("chat")["ready_replicas"] == 2, 30, "chat ready")
        yield running


INFER = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                     "data": [[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]]}]}  # fmt: skip


def traffic(up: Up, stop: threading.Event) -> None:
    """Streamed and plain chat (one long prompt repeated over two replicas: routing decisions and prefix-cache
    hits), a 400, V2 calls (the first one wakes iris: a cold start held by the activator). Bounded: it stops on
    `stop` or after 2000 rounds."""
    prompt = "Tell me about Prometheus and Grafana, and how they watch a fleet of model servers. " * 12
    chat = {"model": "chat", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
    with httpx.Client(base_url=up.url, timeout=60) as client:
        for _ in range(2000):
            if stop.is_set():
                return
            assert client.post("/v2/models/iris/infer", json=INFER).status_code == 200
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
            with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
                assert stream.status_code == 200
                assert sum(1 for line in stream.iter_lines() if line.startswith("data:")) > 1
            assert client.post("/v1/chat/completions", json={"model": "chat", "messages": "x"}).status_code == 400
            stop.wait(0.2)


def test_every_dashboard_and_alert_query_returns_data(up: Up, tmp_path: Path) -> None:
    work = tmp_path / "prometheus"
    work.mkdir()
    token = up.control_headers["authorization"].removeprefix("Bearer ")
    config = scrape_config(work, up.url, up.control_url, token)
    check = promtool("check", "config", config)
    assert check.returncode == 0, check.stdout + check.stderr
    queries = dashboard_queries() + alert_signals()
    stop = threading.Event()
    failures: list[BaseException] = []

    def run_traffic() -> None:
        try:
            traffic(up, stop)
        except BaseException as exc:
            failures.append(exc)
            raise

    with prometheus_on_loopback(config, work) as prometheus:
        # iris is declared at zero replicas: its activator series are there at 0 before its first request, so the
        # traffic's cold start is an increase Prometheus sees.
        iris_at_zero = 'llmserve_activator_held_seconds_count{service="iris"} == 0'
        up.wait(lambda: prometheus.has_data(iris_at_zero), 30, "Prometheus scraped iris' held time at 0")
        up.wait(lambda: prometheus.has_data('llmserve_cold_start_seconds_count{service="iris"} == 0'), 30,
                "Prometheus scraped iris' cold starts at 0")  # fmt: skip
        sender = threading.Thread(target=run_traffic)
        sender.start()
        try:
            pending = wait_for_data(prometheus, queries, failures)
        finally:
            stop.set()
            sender.join(60)
        assert not failures, failures
        scraped = {t["labels"].get("service", t["labels"]["job"]): t["health"] for t in prometheus.targets()}
        assert scraped == {"llmserve-gateway": "up", "chat": "up", "iris": "up"}, scraped
        missing = [f"{where}: {expr}" for where, expr in pending if not any(k in expr for k in PENDING)]
        assert not missing, "no data for:\n" + "\n".join(missing) + f"\n{prometheus.tail()}"
        stale = [f"{where}: {expr}" for where, expr in queries if any(k in expr for k in PENDING)
                 and prometheus.query(expr)]  # fmt: skip
        assert not stale, "these now have data: take their series off PENDING:\n" + "\n".join(stale)


def wait_for_data(
    prometheus: Prometheus,
    queries: list[tuple[str, str]],
    failures: list[BaseException],
    within_s: float = 120,
) -> list[tuple[str, str]]:
    """Poll until every query (but the PENDING ones) has data; returns the ones that never had. The
    workers' targets come from the controller's HTTP SD endpoint (iris starts on demand)."""
    pending = list(queries)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and not failures:
        pending = [q for q in pending if not prometheus.has_data(q[1])]
        if all(any(k in expr for k in PENDING) for _, expr in pending):
            break
        time.sleep(0.5)
    return pending
