"""The split topology, as deployed: `llmserve controller` and `llmserve gateway` as separate processes over the
control API, with simulated vLLM workers (fast-starting; `--speed` makes their clock run faster)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmserve.workers.processes import alive, group_members
from tests.support.topology import GatewayProcess, topology, wait_for
from tests.support.up import sim_service

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    minReplicas: {min_replicas}
    maxReplicas: 3
    autoscaling:
      stableWindowSeconds: 6
      panicWindowSeconds: 2
    model:
      modelFormat:
        name: huggingface
      runtime: vllm-sim
      storageUri: file://{{model_dir}}
      args: ["--profile", "cpu-smollm2", "--speed", "{speed}"]
"""
CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def service_file(work: Path, *, min_replicas: int = 1, speed: int = 20) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return sim_service(work, SERVICE.format(min_replicas=min_replicas, speed=speed))


@dataclass
class Traffic:
    """Steady requests through some gateways from a few client threads; every outcome is kept."""

    urls: list[str]
    clients: int = 4
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, index: int) -> None:
        url = self.urls[index % len(self.urls)]
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(f"{url}/v1/chat/completions", json=CHAT)
                    self.statuses.append(response.status_code)
                    if response.status_code != 200:
                        self.errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def count(self) -> int:
        return len(self.statuses) + len(self.errors)


@contextmanager
def steady(urls: list[str], clients: int = 4) -> Iterator[Traffic]:
    traffic = Traffic(urls, clients)
    threads = [threading.Thread(target=traffic.run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield traffic
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(60)


def answer(gateway: GatewayProcess, model: str) -> int:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "model": model}, timeout=30).status_code


def test_two_gateways_serve_and_the_controller_sums_their_demand(tmp_path: Path) -> None:
    with topology(service_file(tmp_path, speed=1), tmp_path, gateways=2) as (controller, (first, second)):
        for gateway in (first, second):
            assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        wait_for(lambda: len(controller.status()["gateways"]) == 2, 15, "both gateways reporting", controller.tail)
        stop = threading.Event()
        streaming = threading.Semaphore(0)

        def stream(url: str) -> None:
            body = {**CHAT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
                assert response.status_code == 200
                streaming.release()
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

        threads = [threading.Thread(target=stream, args=(g.url,)) for g in (first, first, second, second, second)]
        for thread in threads:
            thread.start()
        try:
            for _ in threads:
                assert streaming.acquire(timeout=30)
            # 2 streams through one gateway, 3 through the other: the controller sees 5 in flight.
            wait_for(lambda: controller.service("sim")["demand"]["in_flight"] == 5, 15, "summed demand")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        wait_for(lambda: controller.service("sim")["demand"]["in_flight"] == 0, 15, "demand back to 0")


def test_a_non_streamed_request_counts_while_it_runs(tmp_path: Path) -> None:
    with topology(service_file(tmp_path, speed=1), tmp_path) as (controller, (gateway,)):
        done = threading.Event()

        def slow() -> None:
            body = {**CHAT, "max_tokens": 2000, "ignore_eos": True}  # headers only when generation ends
            with contextlib.suppress(httpx.TimeoutException):  # hanging up aborts it
                httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=3)
            done.set()

        thread = threading.Thread(target=slow)
        thread.start()
        wait_for(lambda: controller.service("sim")["demand"]["in_flight"] == 1, 15, "in flight before its headers")
        assert not done.is_set()
        thread.join(30)


def test_controller_killed_under_steady_traffic_then_adopts_its_replicas(tmp_path: Path) -> None:
    config = service_file(tmp_path)
    with topology(config, tmp_path) as (controller, (gateway,)):
        pids = controller.pids("sim")
        epoch = controller.status()["resourceVersion"].split(".")[0]
        with steady([gateway.url]) as traffic:
            wait_for(lambda: traffic.count() >= 100, 60, "traffic before the kill")
            controller.kill(signal.SIGKILL)
            before_restart = traffic.count()
            wait_for(lambda: traffic.count() >= before_restart + 150, 60, "traffic while the controller is gone")
            controller.start()
            status = controller.status()
            assert status["resourceVersion"].split(".")[0] != epoch  # a new controller...
            assert controller.pids("sim") == pids  # ...serving the very same worker processes: no cold start
            assert all(r["adopted"] for r in controller.service("sim")["replicas"])
            wait_for(lambda: controller.status()["watchers"] == 1, 20, "the gateway's watch resumed", gateway.tail)
            wait_for(lambda: len(controller.status()["gateways"]) == 1, 20, "its demand reports resumed")
            wait_for(lambda: traffic.count() >= 400, 120, "400 requests")
        assert traffic.errors == []
        assert set(traffic.statuses) == {200}
        # Scaling works again: a change applied to the new controller reaches the gateway.
        scaled = service_file(tmp_path / "scaled", min_replicas=2)
        applied = controller.cli("apply", "-f", str(scaled))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: len(controller.pids("sim")) == 2, 60, "second replica")
        ready = lambda: httpx.get(f"{gateway.url}/ready", timeout=5).json()["services"]["sim"]["ready_replicas"]  # noqa: E731
        wait_for(lambda: ready() == 2, 30, "the gateway sees both")


def test_a_gateway_restart_touches_no_worker(tmp_path: Path) -> None:
    with topology(service_file(tmp_path), tmp_path, gateways=2) as (controller, (first, second)):
        pids = controller.pids("sim")
        with steady([second.url], clients=2) as traffic:
            first.stop()
            first.start()
            assert httpx.post(f"{first.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
            wait_for(lambda: traffic.count() >= 20, 30, "traffic through the other gateway")
        assert traffic.errors == []
        assert controller.pids("sim") == pids
        assert [r["restarts"] for r in controller.service("sim")["replicas"]] == [0]


def test_apply_new_changed_and_invalid_services_then_delete(tmp_path: Path) -> None:
    with topology(service_file(tmp_path), tmp_path) as (controller, (gateway,)):
        other = tmp_path / "other.yaml"
        other.write_text(service_file(tmp_path / "o").read_text().replace("name: sim", "name: other"))
        applied = controller.cli("apply", "-f", str(other))
        assert applied.returncode == 0, applied.stderr
        assert "other: created" in applied.stdout
        wait_for(
            lambda: (
                httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 200
            ),
            60,
            "the new service answers",
        )
        # A changed predictor under steady traffic: new replicas first, the old one drained after; nothing fails.
        (old_pid,) = controller.pids("sim")
        changed = tmp_path / "changed.yaml"
        changed.write_text(service_file(tmp_path / "c").read_text().replace('"--speed", "20"', '"--speed", "25"'))
        with steady([gateway.url]) as traffic:
            applied = controller.cli("apply", "-f", str(changed))
            assert applied.returncode == 0, applied.stderr
            assert "new revision sim-00002" in applied.stdout
            wait_for(lambda: controller.service("sim")["serving_revision"] == "sim-00002", 60, "rolled out")
            wait_for(lambda: old_pid not in controller.pids("sim") and not alive(old_pid), 60, "old replica stopped")
            after = traffic.count()
            wait_for(lambda: traffic.count() >= after + 20, 30, "traffic on the new revision")
        assert traffic.errors == []
        assert group_members(old_pid) == []
        # An invalid spec is refused with the loader's message, and nothing changes.
        invalid = tmp_path / "invalid.yaml"
        invalid.write_text(changed.read_text().replace("maxReplicas: 3", "maxReplics: 3"))
        refused = controller.cli("apply", "-f", str(invalid))
        assert refused.returncode == 1
        assert "spec.predictor.maxReplics: unknown field" in refused.stderr
        assert controller.service("sim")["serving_revision"] == "sim-00002"
        # Delete: gateways stop routing to it at once.
        deleted = controller.cli("delete", "other")
        assert deleted.returncode == 0, deleted.stderr
        wait_for(
            lambda: (
                httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 404
            ),
            15,
            "deleted service unknown to the gateway",
        )
        missing = controller.cli("delete", "other")
        assert missing.returncode == 1
        assert "No service named 'other'" in missing.stderr


def test_a_request_right_after_a_worker_died_is_answered(tmp_path: Path) -> None:
    with topology(service_file(tmp_path), tmp_path) as (controller, (gateway,)):
        (keeper,) = controller.pids("sim")
        (worker,) = [pid for pid in group_members(keeper) if pid != keeper]  # the simulator under its keeper
        assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        os.kill(worker, signal.SIGKILL)
        # Sent before anyone noticed: refused by the dead worker, so held until the replacement is ready.
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=60)
        assert response.status_code == 200, response.text
        assert controller.service("sim")["replicas"][0]["restarts"] == 1


def test_gateway_workers_share_one_port(tmp_path: Path) -> None:
    with topology(service_file(tmp_path), tmp_path, gateways=0) as (controller, _):
        shared = GatewayProcess(controller, tmp_path, name="shared", extra=("--workers", "2"))
        shared.start()
        try:
            wait_for(lambda: len(controller.status()["gateways"]) == 2, 30, "two gateway processes reporting")
            statuses = [  # a new connection each: the kernel spreads them over both processes
                httpx.post(f"{shared.url}/v1/chat/completions", json=CHAT, timeout=30).status_code for _ in range(10)
            ]
            assert statuses == [200] * 10
        finally:
            shared.stop()


def test_a_gateway_started_before_its_controller_waits_for_the_token_and_serves(tmp_path: Path) -> None:
    """`llmserve gateway & llmserve controller` on one machine: the gateway finds no token in the state dir yet,
    waits for the one the controller writes at start, and serves once the controller's replica is ready."""
    from tests.support.topology import ControllerProcess

    controller = ControllerProcess(service_file(tmp_path / "svc"), tmp_path)
    gateway = GatewayProcess(controller, tmp_path)
    gateway.start(wait_ready=False)
    try:
        wait_for(lambda: "waiting up to" in gateway.tail(), 30, "the gateway waits for the token", gateway.tail)
        controller.start()
        wait_for(lambda: httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10).status_code == 200,
                 60, "a chat through the gateway", gateway.tail)  # fmt: skip
        assert "invalid control token" not in gateway.tail()
    finally:
        gateway.stop()
        if controller.process is not None and controller.process.poll() is None:
            controller.kill(signal.SIGTERM)
