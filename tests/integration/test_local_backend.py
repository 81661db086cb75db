"""The controller with the real local backend: real processes, real ports, real signals."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from controller.backends.local import Leases, LocalBackend
from controller.reconciler import Controller
from controller.settings import ControllerSettings
from controller.statedir import StateDir
from llmserve.endpoints import EndpointRegistry
from llmserve.spec import InferenceService, parse_services
from llmserve.workers import WorkerPlan
from llmserve.workers.processes import alive, group_members
from tests.support.waiting import until

SPEC = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: fake}
spec:
  predictor:
    minReplicas: 1
    model: {modelFormat: {name: huggingface}, storageUri: file:///unused}
"""


def fake_worker_plan(*extra: str) -> Callable[[InferenceService, Path], WorkerPlan]:
    def plan(service: InferenceService, model_dir: Path) -> WorkerPlan:
        argv = (sys.executable, "-m", "tests.support.fake_worker_main", "--host", "{host}", "--port", "{port}")
        return WorkerPlan(argv=argv + extra, env={"PYTHONPATH": str(Path(__file__).parents[2])})

    return plan


SETTINGS = ControllerSettings(
    startup_poll_s=0.1, health_interval_s=0.2, backoff_initial_s=0.1, stop_grace_s=2.0, health_timeout_s=2.0
)


async def start_controller(
    tmp_path: Path, *extra: str, state: StateDir | None = None, grace_s: float = 60.0
) -> tuple[Controller, EndpointRegistry]:
    """A controller with the local backend; with `state`, replicas run under keepers and are adopted on restart."""
    registry = EndpointRegistry()
    settings = SETTINGS.model_copy(update={"log_dir": tmp_path / "logs"})
    leases = Leases(state.leases_dir, grace_s=grace_s, renew_s=0.2) if state is not None else None
    controller = Controller(
        LocalBackend(log_dir=settings.log_dir, leases=leases),
        registry,
        settings,
        pull=lambda svc: tmp_path,
        plan=fake_worker_plan(*extra),
        state_dir=state,
    )
    await controller.start()
    controller.apply(parse_services(SPEC))
    await until(lambda: len(registry.ready_endpoints("fake")) == 1, within_s=20)
    return controller, registry


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def chat(http: httpx.AsyncClient, url: str) -> str:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post(f"{url}/v1/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


async def test_killed_worker_is_restarted_and_serves_again(tmp_path: Path, http: httpx.AsyncClient) -> None:
    controller, registry = await start_controller(tmp_path)
    try:
        (endpoint,) = registry.ready_endpoints("fake")
        assert (await chat(http, endpoint.url)).startswith("hello from")
        (replica,) = controller.replicas("fake")
        pid = replica.record.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: registry.ready_endpoints("fake") == ())
        await until(lambda: len(registry.ready_endpoints("fake")) == 1, within_s=20)
        (restarted,) = registry.ready_endpoints("fake")
        assert replica.record.restarts == 1
        assert replica.record.pid != pid
        assert (await chat(http, restarted.url)).startswith("hello from")
        log_file = tmp_path / "logs" / "fake-00001-0.log"
        assert log_file.exists()
    finally:
        await controller.stop()


async def test_stop_takes_the_whole_process_group(tmp_path: Path) -> None:
    controller, _ = await start_controller(tmp_path, "--spawn-child")
    (replica,) = controller.replicas("fake")
    pid = replica.record.pid
    assert pid is not None
    await until(lambda: len(group_members(pid)) == 2)  # the worker and the child it started
    await controller.stop()
    assert not alive(pid)
    assert group_members(pid) == []


async def test_a_worker_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    controller, _ = await start_controller(tmp_path, "--ignore-sigterm")
    (replica,) = controller.replicas("fake")
    pid = replica.record.pid
    assert pid is not None
    started = time.monotonic()
    await controller.stop()
    assert not alive(pid)
    assert time.monotonic() - started >= SETTINGS.stop_grace_s * 0.9  # it was asked first, then killed


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")
async def test_concurrent_replicas_get_their_own_cpus(tmp_path: Path) -> None:
    backend = LocalBackend(log_dir=tmp_path / "logs", cpus={0, 1})
    argv = (sys.executable, "-m", "tests.support.fake_worker_main", "--host", "{host}", "--port", "{port}")
    plan = WorkerPlan(argv=argv, env={"PYTHONPATH": str(Path(__file__).parents[2])}, cpu_bind_env="WORKER_CPUS")

    def environment(pid: int | None) -> dict[str, str]:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            pairs = [item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item]
        return {key.decode(): value.decode() for key, value in pairs}

    first = await backend.launch("a", plan)
    second = await backend.launch("b", plan)
    try:
        assert environment(first.pid)["WORKER_CPUS"] == "0"
        assert environment(second.pid)["WORKER_CPUS"] == "1"
        assert os.sched_getaffinity(first.pid or 0) == {0, 1}
        assert os.sched_getaffinity(second.pid or 0) == {1}  # off CPU 0, where the first one's runner computes
        assert backend.describe()["cpus"] == {"a": "0", "b": "1"}
        await first.stop(2.0)
        await until(lambda: backend.describe()["cpus"] == {"b": "1"})  # released when the process exits
        third = await backend.launch("c", plan)
        assert environment(third.pid)["WORKER_CPUS"] == "0"
        await third.stop(2.0)
        plain = await backend.launch("d", WorkerPlan(argv=argv, env=plan.env))  # no cpu_bind_env: left alone
        assert "WORKER_CPUS" not in environment(plain.pid)
        await plain.stop(2.0)
    finally:
        await second.stop(2.0)
        await backend.close()
    assert backend.describe()["cpus"] == {}


async def test_a_restarted_controller_adopts_the_running_replica(tmp_path: Path, http: httpx.AsyncClient) -> None:
    state = StateDir(tmp_path / "state")
    first, registry = await start_controller(tmp_path, state=state)
    (replica,) = first.replicas("fake")
    pid = replica.record.pid
    assert pid is not None
    await first.stop(keep_workers=True)  # as after a crash: the replica stays, nobody renews its lease
    assert alive(pid)
    second, registry = await start_controller(tmp_path, state=state)
    try:
        (adopted,) = second.replicas("fake")
        assert adopted.record.pid == pid  # the same process: no cold start
        assert adopted.record.adopted
        (endpoint,) = registry.ready_endpoints("fake")
        assert (await chat(http, endpoint.url)).startswith("hello from")
    finally:
        await second.stop()
    assert not alive(pid)
    assert group_members(pid) == []
    assert state.replicas() == []


async def test_a_replica_nobody_adopts_stops_itself(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    controller, _ = await start_controller(tmp_path, state=state, grace_s=1.0)
    (replica,) = controller.replicas("fake")
    pid = replica.record.pid
    assert pid is not None
    await controller.stop(keep_workers=True)
    await until(lambda: not alive(pid) and group_members(pid) == [], within_s=20)  # the keeper gave up on us


async def test_a_changed_revision_is_not_adopted(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    first, _ = await start_controller(tmp_path, state=state)
    (replica,) = first.replicas("fake")
    pid = replica.record.pid
    assert pid is not None
    await first.stop(keep_workers=True)
    saved = state.load_services()
    saved[0]["revisions"][0]["spec"]["spec"]["predictor"]["model"]["args"] = ["--changed"]
    state.save_services(saved)  # as if the revision's template changed since the replica started
    second, _ = await start_controller(tmp_path, state=state)
    try:
        assert not alive(pid)  # stopped, not adopted
        (fresh,) = second.replicas("fake")
        assert fresh.record.pid != pid
    finally:
        await second.stop()
