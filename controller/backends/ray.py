"""Replicas as Ray actors, for when one machine is not enough.

Each replica is a named Ray actor (`ReplicaHost`) that starts the WorkerPlan's process on its node, in its own
process group, on a free port of the node's IP (and a second one for gRPC when the plan asks), and reports that
URL; the controller's supervision (health checks, restarts with backoff, publish/unpublish) runs unchanged on
the `RayReplica` handle `launch()` returns.
`RayReplica.wait()` returns when the process exits *or* the actor dies (its node lost, or the actor killed): an
actor call that finishes with the process, or fails with the actor. The controller then replaces the replica
on a live node.

Placement: replicas spread over the live nodes that have room (see `RayBackend`); a plan's `resources` ("CPU",
"GPU", "memory" in bytes, custom names) become actor options. An actor that only holds a process reserves no
CPU unless asked (`num_cpus=0`), and it does not restart by itself (`max_restarts=0`): restarts are the
controller's, with its backoff.

Only this module imports `ray`, and only when used: `import controller` works without Ray installed.
Every node runs the same environment (Ray, llmserve, the runtime: the plan's argv names an interpreter path)
and needs the model at the plan's path (`llmserve pull` on each machine, or a shared cache directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve.workers import WorkerPlan
from llmserve.workers.processes import free_port, signal_group, spawn_group_leader, stop_group

log = logging.getLogger("llmserve.controller")

NAMESPACE = "llmserve"
_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a single-node Ray that stays on 127.0.0.1
_ANSWER_S = 5.0  # how long a live actor may take to acknowledge a call that it answers at once
_STOP_SLACK_S = 5.0  # beyond the grace period: how long to wait for an actor to report it stopped its process
_KILL_WAIT_S = 10.0  # after ray.kill: how long to wait for Ray to report the actor dead


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the Ray backend needs Ray: pip install 'llmserve[ray]'") from exc
    return ray


# -- connecting ---------------------------------------------------------------------------------------------------
def connect_ray(
    address: str | None,
    namespace: str = NAMESPACE,
    *,
    node_ip_address: str | None = None,
    log_to_driver: bool = True,
) -> str:
    """Connect this process to Ray; the cluster's GCS address.

    With `address` ("HOST:PORT" of the head's GCS, as `ray start --head` prints it), join that cluster. Ray
    clusters use token auth: every node and client needs `RAY_AUTH_MODE=token` and the cluster's token
    (`RAY_AUTH_TOKEN`, a file named by `RAY_AUTH_TOKEN_PATH`, or ~/.ray/auth_token); when the mode is unset and a
    token is available, it is turned on here, because Ray itself never does that for an explicit address.

    Without `address`, start a private single-node Ray on loopback (no dashboard). "local" is passed so that a
    stale `ray_current_cluster` file of an earlier `ray start` cannot make `ray.init()` wait for a dead cluster.
    It uses token auth (Ray's default) with a token that only lives in this process's environment (and the Ray
    processes it starts) unless one is configured: left alone, Ray would write ~/.ray/auth_token, and that file
    silently turns token auth on for every later `ray start` of this user.

    Calling it again while connected returns the current address.
    """
    ray = _ray()
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    if address is None:
        # Ray resolves 127.0.0.1 to the machine's address unless told there is no cluster: tell it (the variable
        # for the Ray processes it starts, the constant for this one: Ray read the variable at import).
        os.environ[_LOOPBACK_ONLY] = "0"
        constants: Any = importlib.import_module("ray._private.ray_constants")
        constants.ENABLE_RAY_CLUSTER = False
        if os.environ.setdefault("RAY_AUTH_MODE", "token") == "token" and not _token_available():
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    elif "RAY_AUTH_MODE" not in os.environ and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    # Ray reads the auth mode and the token once and caches them (the mode at import): make it read them now.
    raylet: Any = importlib.import_module("ray._raylet")
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()
    if address is None:
        context = ray.init(
            address="local",
            namespace=namespace,
            include_dashboard=False,
            _node_ip_address=node_ip_address or "127.0.0.1",
            log_to_driver=log_to_driver,
            configure_logging=False,
        )
    else:
        context = ray.init(
            address=address,
            namespace=namespace,
            _node_ip_address=node_ip_address,
            log_to_driver=log_to_driver,
            configure_logging=False,
        )
    gcs_address = str(context.address_info["gcs_address"])
    log.info("connected to Ray at %s (namespace %s)", gcs_address, namespace)
    return gcs_address


def disconnect_ray() -> None:
    """Leave the cluster (a local Ray started by `connect_ray(None)` stops with it)."""
    if "ray" in sys.modules:
        _ray().shutdown()


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


# -- resources ----------------------------------------------------------------------------------------------------
def actor_resources(resources: Mapping[str, float], default_num_cpus: float = 0.0) -> dict[str, Any]:
    """Actor options for a plan's resources."""
    rest = dict(resources)
    options: dict[str, Any] = {"num_cpus": rest.pop("CPU", default_num_cpus)}
    if gpus := rest.pop("GPU", 0.0):
        options["num_gpus"] = gpus
    if memory := rest.pop("memory", 0.0):
        options["memory"] = int(memory)
    if rest:
        options["resources"] = rest
    return options


# -- the actor ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """What a ReplicaHost reports once the process runs."""

    url: str
    grpc_address: str | None  # host:port, when the plan asked for a gRPC port
    pid: int
    node_ip: str
    node_id: str
    log_path: str


class ReplicaHost:
    """Runs inside the replica's actor, on its node: starts the worker process and watches it.

    An async actor, so `wait()` and `stop()` run side by side; the process is started from the actor's event
    loop thread, which lives as long as the actor, so PR_SET_PDEATHSIG (SIGTERM, as the local backend) takes the
    process down with the actor, however the actor ends. `stop()` stops the whole process group.
    """

    def __init__(self, replica_id: str, log_dir: str) -> None:
        self._replica_id = replica_id
        self._log_dir = log_dir
        self._process: asyncio.subprocess.Process | None = None
        self._terminated = False
        self._log_path = ""

    async def start(self, plan: WorkerPlan) -> Started:
        ray = _ray()
        context = ray.get_runtime_context()
        node_ip = ray.util.get_node_ip_address()
        port = free_port(node_ip)
        grpc_port = free_port(node_ip) if plan.needs_grpc_port else None
        log_dir = _usable_dir(Path(self._log_dir))
        self._log_path = str(log_dir / f"{self._replica_id}.log")
        env = {**os.environ, **plan.env}
        if "OMP_NUM_THREADS" not in plan.env and not context.get_assigned_resources().get("CPU"):
            # Ray forces OMP_NUM_THREADS=1 into actors that hold no CPU; the worker was given no CPU limit.
            env.pop("OMP_NUM_THREADS", None)
        self._process = await spawn_group_leader(plan.command(node_ip, port, grpc_port), env, Path(self._log_path))
        return Started(
            url=f"http://{node_ip}:{port}",
            grpc_address=f"{node_ip}:{grpc_port}" if grpc_port is not None else None,
            pid=self._process.pid,
            node_ip=node_ip,
            node_id=str(context.get_node_id()),
            log_path=self._log_path,
        )

    async def wait(self) -> int:
        """Until the process exits; its exit status."""
        assert self._process is not None
        return await self._process.wait()

    async def terminate(self) -> None:
        """SIGTERM to the process group, once; answers at once (the controller's sign that the actor is there)."""
        process = self._process
        if process is not None and process.returncode is None and not self._terminated:
            self._terminated = True
            signal_group(process.pid, signal.SIGTERM)

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; returns once no process of the group is left."""
        process = self._process
        if process is None:
            return None
        await self.terminate()  # SIGTERM once: a second one makes vLLM's server skip its graceful shutdown
        return await stop_group(process, grace_s, terminate=False)

    async def log_tail(self, max_bytes: int = 8192) -> str:
        """The end of the process's log (stdout and stderr), for diagnosing a replica on another machine."""
        return await asyncio.to_thread(_tail, self._log_path, max_bytes) if self._log_path else ""


def _tail(path: str, max_bytes: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
        return f.read().decode(errors="replace")


def _usable_dir(wanted: Path) -> Path:
    """`wanted`, created; a directory under the temp dir when this node cannot have it."""
    for candidate in (wanted, Path(tempfile.gettempdir()) / "llmserve-logs"):
        with contextlib.suppress(OSError):
            candidate.mkdir(parents=True, exist_ok=True)
            return candidate
    raise OSError(f"no writable log directory ({wanted})")


# -- the controller's side ----------------------------------------------------------------------------------------
class RayReplica:
    """A replica's actor as the controller sees it (the ReplicaProcess protocol)."""

    def __init__(
        self,
        actor: Any,
        name: str,
        started: Started,
        exit_ref: Any,
        on_lost: Callable[[RayReplica], None] | None = None,
    ) -> None:
        self.actor = actor
        self.actor_name = name
        self.started = started
        self.lost: str | None = None  # why the actor was lost (died, or unreachable), if it was
        self._on_lost = on_lost
        self._exit: asyncio.Future[int | None] = asyncio.ensure_future(self._await_exit(exit_ref))

    @property
    def url(self) -> str:
        return self.started.url

    @property
    def grpc_address(self) -> str | None:
        return self.started.grpc_address

    @property
    def pid(self) -> int | None:
        """The worker process's pid on its node (`node_ip`)."""
        return self.started.pid

    @property
    def node_ip(self) -> str:
        return self.started.node_ip

    @property
    def node_id(self) -> str:
        return self.started.node_id

    def running(self) -> bool:
        return not self._exit.done()

    async def wait(self) -> int | None:
        """The process's exit status; None when the actor was lost first (its node died, or it was killed)."""
        return await asyncio.shield(self._exit)

    async def _await_exit(self, exit_ref: Any) -> int | None:
        ray = _ray()
        try:
            return int(await exit_ref)
        except ray.exceptions.RayError as exc:
            self._mark_lost(_reason(exc))
            return None

    def add_exit_callback(self, callback: Callable[[], object]) -> None:
        """Call `callback()` once the process has exited or the actor is lost."""
        self._exit.add_done_callback(lambda _: callback())

    def _mark_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            log.warning("replica actor %s on %s is lost: %s", self.actor_name, self.node_ip, reason)
            if self._on_lost is not None:
                self._on_lost(self)

    async def stop(self, grace_s: float) -> None:
        """Stop the process and its group (SIGTERM, SIGKILL after `grace_s`), then kill the actor."""
        ray = _ray()
        if self.running():
            # An actor on a machine that vanished answers nothing, and Ray may take a minute to declare that
            # machine dead: a live actor acknowledges `terminate` at once, so a silent one is not waited for.
            try:
                await asyncio.wait_for(self.actor.terminate.remote(), _ANSWER_S)
                await asyncio.wait_for(self.actor.stop.remote(grace_s), grace_s + _STOP_SLACK_S)
            except ray.exceptions.RayError as exc:
                self._mark_lost(_reason(exc))
            except TimeoutError:
                self._mark_lost("no answer from the actor")
        with contextlib.suppress(ray.exceptions.RayError):
            ray.kill(self.actor, no_restart=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exit), _KILL_WAIT_S)
        if not self._exit.done():
            self._exit.cancel()

    def handle(self) -> dict[str, Any] | None:
        """Ray replicas end with the controller that started them (their actors are not detached)."""
        return None

    async def log_tail(self, max_bytes: int = 8192) -> str:
        """The end of the worker's log, read on its node ("" when the actor is gone)."""
        ray = _ray()
        try:
            return str(await self.actor.log_tail.remote(max_bytes))
        except ray.exceptions.RayError:
            return ""


def _reason(exc: BaseException) -> str:
    """A Ray error in one line: its type and the sentence that says why (Ray's messages run over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = next((line for line in lines if line.startswith("The actor died because")), lines[0] if lines else "")
    return f"{type(exc).__name__}: {why}"


@dataclass
class _Placement:
    """Where one of our actors is (or is being started), for spreading the next ones."""

    service: str
    node_id: str | None  # None: left to Ray
    wanted: dict[str, float]  # its resources, in Ray's names
    replica: RayReplica | None = None  # None while it starts (its resources may not show as used yet)


class RayBackend:
    """Launch replicas as Ray actors on the cluster `connect_ray()` joined.

    Placement: each new actor goes to the live node that has room for its resources and holds the fewest
    replicas of its service (then the fewest replicas at all), pinned there (hard node affinity: if that node
    dies first, the launch fails and the controller retries). Ray's SPREAD alone is a round-robin hint that put
    both replicas of a service on one node in our tests. When no node has room, placement is left to Ray
    (`scheduling_strategy`), so an autoscaling cluster can add a node. Actors are named "<replica id>.<n>" in
    the namespace `connect_ray()` chose: one controller per namespace.

    `num_cpus`: CPUs an actor reserves when its plan names none (0: it only holds a process).
    `start_timeout_s`: how long an actor may wait to start before the launch fails (the controller backs off and
    tries again).
    `avoid_lost_node_s`: after an actor is lost (dead, unreachable) or fails to start, new actors avoid its node
    for this long while another node has room: the controller's health checks often notice a dead machine before
    Ray declares it dead (~15 s after its raylet dies, ~1 min after the machine vanishes), and a replacement sent
    there would only wait for that verdict.
    """

    name = "ray"

    def __init__(
        self,
        log_dir: Path = Path(".llmserve/logs"),
        *,
        num_cpus: float = 0.0,
        scheduling_strategy: str = "SPREAD",
        start_timeout_s: float = 120.0,
        avoid_lost_node_s: float = 60.0,
    ) -> None:
        self.log_dir = log_dir.resolve()
        self.num_cpus = num_cpus
        self.scheduling_strategy = scheduling_strategy
        self.start_timeout_s = start_timeout_s
        self.avoid_lost_node_s = avoid_lost_node_s
        self._launches = itertools.count()
        self._actor_class: Any = None
        self._placements: dict[str, _Placement] = {}  # by actor name; until its process exits or it is lost
        self._avoid: dict[str, float] = {}  # node id -> until (monotonic)

    def actor_options(self, name: str, plan: WorkerPlan, node_id: str | None = None) -> dict[str, Any]:
        """Ray actor options for one replica, pinned to `node_id` when given."""
        strategy: Any = self.scheduling_strategy
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return {
            "name": name,
            "max_restarts": 0,
            "max_task_retries": 0,
            "scheduling_strategy": strategy,
            **actor_resources(plan.resources, self.num_cpus),
        }

    def wanted(self, plan: WorkerPlan) -> dict[str, float]:
        """A plan's resources in Ray's names, with this backend's default CPU."""
        return {**plan.resources, "CPU": plan.resources.get("CPU", self.num_cpus)}

    def choose_node(
        self, service: str, wanted: Mapping[str, float], available: Mapping[str, Mapping[str, float]]
    ) -> str | None:
        """The node for a new replica of `service` (None: none has room); `available`: free resources by node."""
        now = time.monotonic()
        self._avoid = {node: until for node, until in self._avoid.items() if until > now}
        placements = list(self._placements.values())
        starting: dict[str, dict[str, float]] = {}
        for placement in placements:
            if placement.replica is None and placement.node_id is not None:
                used = starting.setdefault(placement.node_id, {})
                for key, amount in placement.wanted.items():
                    used[key] = used.get(key, 0.0) + amount
        room = [
            node
            for node, free in available.items()
            if all(free.get(k, 0.0) - starting.get(node, {}).get(k, 0.0) >= v - 1e-9 for k, v in wanted.items() if v)
        ]
        candidates = [node for node in room if node not in self._avoid] or room
        if not candidates:
            return None

        def load(node: str) -> tuple[int, int, str]:
            mine = sum(p.node_id == node and p.service == service for p in placements)
            return mine, sum(p.node_id == node for p in placements), node

        return min(candidates, key=load)

    def _avoid_node(self, node_id: str | None) -> None:
        if node_id is not None:
            self._avoid[node_id] = time.monotonic() + self.avoid_lost_node_s

    async def start(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    async def launch(self, replica_id: str, plan: WorkerPlan) -> RayReplica:
        ray = _ray()
        if not ray.is_initialized():
            raise RuntimeError("not connected to Ray: call connect_ray() first")
        if self._actor_class is None:
            self._actor_class = ray.remote(ReplicaHost)
        name = f"{replica_id}.{next(self._launches)}"  # unique: a dead actor's name may still be taken
        service = replica_id.rsplit("-", 1)[0]  # the reconciler names replicas "<service>-<n>"
        wanted = self.wanted(plan)
        try:
            available = await asyncio.to_thread(_available_per_node)
        except Exception as exc:  # a DeveloperAPI: if it fails, Ray places the actor (scheduling_strategy)
            log.warning("free resources per node unknown (%s); Ray places replica %s", exc, replica_id)
            available = {}
        node_id = self.choose_node(service, wanted, available)  # chosen and recorded with no await in between
        self._placements[name] = placement = _Placement(service, node_id, wanted)
        options = self.actor_options(name, plan, node_id)
        began = time.monotonic()
        try:
            actor = self._actor_class.options(**options).remote(replica_id, str(self.log_dir))
        except BaseException:
            del self._placements[name]
            raise
        try:
            started: Started = await asyncio.wait_for(actor.start.remote(plan), self.start_timeout_s)
        except BaseException as exc:
            del self._placements[name]
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            if isinstance(exc, TimeoutError | ray.exceptions.RayError):
                self._avoid_node(node_id)
            if isinstance(exc, TimeoutError):
                where = f"node {node_id}" if node_id else "any node"
                raise RuntimeError(f"actor {name} did not start on {where} within {self.start_timeout_s:g} s") from None
            if isinstance(exc, ray.exceptions.RayError):
                raise RuntimeError(f"actor {name} failed before starting its process: {_reason(exc)}") from exc
            raise
        replica = RayReplica(actor, name, started, actor.wait.remote(), on_lost=self._lost)
        placement.node_id, placement.replica = started.node_id, replica
        replica.add_exit_callback(lambda: self._placements.pop(name, None))
        log.info(
            "replica %s: actor %s on node %s, process %d at %s (%.1f s)",
            replica_id, name, started.node_ip, started.pid, started.url, time.monotonic() - began,
        )  # fmt: skip
        return replica

    def _lost(self, replica: RayReplica) -> None:
        self._avoid_node(replica.node_id)

    async def adopt(self, replica_id: str, handle: dict[str, Any]) -> RayReplica | None:
        return None  # actors end with their driver: nothing to adopt

    async def release(self) -> None:
        return None  # they end with us anyway

    async def close(self) -> None:
        """Stop whatever replica is still running (the controller normally stopped them all)."""
        live = [p.replica for p in self._placements.values() if p.replica is not None and p.replica.running()]
        await asyncio.gather(*(replica.stop(0.0) for replica in live), return_exceptions=True)
        self._placements.clear()


def _available_per_node() -> dict[str, dict[str, float]]:
    """Free resources of each live node (Ray's DeveloperAPI `available_resources_per_node`)."""
    state: Any = importlib.import_module("ray._private.state")
    return {str(node): dict(free) for node, free in state.available_resources_per_node().items()}
