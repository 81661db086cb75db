"""Replicas as processes on this machine, each in its own process group on a free loopback port.

Every plain replica runs under a keeper (`llmserve.workers.keeper`) that leads its process group and outlives the
controller: a controller that crashes or is upgraded re-adopts it (`adopt`, from the `handle()` a previous
controller recorded). This backend renews each keeper's lease while it owns the replica; a replica whose lease nobody
renews for the grace period stops itself, so none is left behind. Stopping a replica signals its whole process
group (the keeper, vLLM's API server, the engine-core and worker processes under it). With a warm pool, a vLLM
replica is a pooled process that has imported vLLM already and binds to the model in seconds
(`llmserve.workers.warm`); pooled processes end with the controller that started them (they are not adopted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from controller.backends.cpus import CpuAllocator, cpu_list, parse_cpu_list
from llmserve.workers import WorkerPlan
from llmserve.workers.processes import AdoptedGroup, GroupLeader, alive, free_port, spawn_group_leader
from llmserve.workers.warm import PooledProcess, WarmPool, WarmPoolError

log = logging.getLogger("llmserve.controller")


@dataclasses.dataclass(frozen=True)
class Leases:
    """Where keepers' lease files live, how long a keeper waits for a renewal, and how often they are renewed."""

    directory: Path
    grace_s: float = 60.0
    renew_s: float = 2.0


class LocalProcess(GroupLeader):
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        url: str,
        log_path: Path,
        grpc_address: str | None = None,
        lease: Path | None = None,
        cpus: str = "",
    ) -> None:
        super().__init__(process)
        self._url = url
        self._grpc_address = grpc_address
        self.log_path = log_path
        self.lease = lease
        self.cpus = cpus

    @property
    def url(self) -> str:
        return self._url

    @property
    def grpc_address(self) -> str | None:
        return self._grpc_address

    def handle(self) -> dict[str, Any] | None:
        if self.lease is None:
            return None
        return _handle(self.pid, self._url, self._grpc_address, self.log_path, self.lease, self.cpus)


class AdoptedProcess(AdoptedGroup):
    """A replica a previous controller started under a keeper, taken over by this one."""

    def __init__(self, pid: int, url: str, grpc_address: str | None, log_path: Path, lease: Path, cpus: str) -> None:
        super().__init__(pid)
        self._url = url
        self._grpc_address = grpc_address
        self.log_path = log_path
        self.lease = lease
        self.cpus = cpus

    @property
    def url(self) -> str:
        return self._url

    @property
    def grpc_address(self) -> str | None:
        return self._grpc_address

    def handle(self) -> dict[str, Any] | None:
        return _handle(self.pid, self._url, self._grpc_address, self.log_path, self.lease, self.cpus)


def _renew(lease: Path) -> None:
    """Set the lease's time to now (creating it): a keeper reads it as "a controller owns me"."""
    with contextlib.suppress(OSError), open(lease, "a"):
        os.utime(lease)


def _handle(
    pid: int | None, url: str, grpc_address: str | None, log_path: Path, lease: Path, cpus: str
) -> dict[str, Any]:
    return {"pid": pid, "url": url, "grpc_address": grpc_address, "log": str(log_path), "lease": str(lease),
            "cpus": cpus}  # fmt: skip


class LocalBackend:
    """`leases`: plain replicas run under keepers that outlive this controller (None: they die with it).
    `warm_pool`: started with the backend and closed with it; a vLLM plan takes an idle pooled process when
    there is one, or waits up to `pool_wait_s` for one that is importing (a plain start otherwise, and for every
    other plan). `cpus`: the CPUs replicas' compute threads are spread over (plans with a `cpu_bind_env`; default:
    this process's affinity), so that concurrent replicas do not pin themselves to the same ones."""

    name = "local"

    def __init__(
        self,
        host: str = "127.0.0.1",
        log_dir: Path = Path(".llmserve/logs"),
        warm_pool: WarmPool | None = None,
        pool_wait_s: float = 20.0,
        cpus: set[int] | None = None,
        leases: Leases | None = None,
        python: str | None = None,
    ) -> None:
        self.host = host
        self.log_dir = log_dir
        self.warm_pool = warm_pool
        self.pool_wait_s = pool_wait_s
        self.leases = leases
        self.python = python or sys.executable
        self.cpus = CpuAllocator(cpus if cpus is not None else os.sched_getaffinity(0))
        if warm_pool is not None and warm_pool.cpus is None:
            warm_pool.cpus = self.cpus.placement  # pooled processes import away from busy model runners
        self._releases: set[asyncio.Task[None]] = set()
        self._owned: dict[str, LocalProcess | AdoptedProcess] = {}  # replicas whose leases we renew
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.leases is not None:
            self.leases.directory.mkdir(parents=True, exist_ok=True)
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(), name="lease renewer")
        if self.warm_pool is not None:
            await self.warm_pool.start()

    async def launch(self, replica_id: str, plan: WorkerPlan) -> LocalProcess | PooledProcess:
        plan = self._pin_compute_threads(replica_id, plan)
        try:
            process = await self._launch(replica_id, plan)
        except BaseException:
            self.cpus.release(replica_id)
            raise
        self._watch_exit(replica_id, process, plan.cpu_bind_env is not None)
        return process

    async def adopt(self, replica_id: str, handle: dict[str, Any]) -> AdoptedProcess | None:
        try:
            pid = int(handle["pid"])
            url = str(handle["url"])
            lease = Path(handle["lease"])
        except (KeyError, TypeError, ValueError):
            return None
        if self.leases is None or not alive(pid) or os.getpgid(pid) != pid:
            return None
        _renew(lease)  # ours from now on
        grpc = handle.get("grpc_address")
        cpus = str(handle.get("cpus") or "")
        process = AdoptedProcess(pid, url, str(grpc) if grpc else None, Path(handle.get("log") or ""), lease, cpus)
        if cpus:
            self.cpus.reclaim(replica_id, parse_cpu_list(cpus))
        self._watch_exit(replica_id, process, bool(cpus))
        return process

    async def release(self) -> None:
        """Stop renewing leases; the replicas keep running until a controller adopts them or the grace ends."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        self._owned.clear()

    def _watch_exit(self, replica_id: str, process: LocalProcess | PooledProcess | AdoptedProcess, cpus: bool) -> None:
        if isinstance(process, LocalProcess | AdoptedProcess) and process.handle() is not None:
            self._owned[replica_id] = process

        async def exited() -> None:
            await process.wait()
            if self._owned.get(replica_id) is process:
                del self._owned[replica_id]
            if cpus:
                self.cpus.release(replica_id)

        task = asyncio.get_running_loop().create_task(exited())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _renew_forever(self) -> None:
        assert self.leases is not None
        while True:
            for process in list(self._owned.values()):
                if process.lease is not None:
                    _renew(process.lease)
            await asyncio.sleep(self.leases.renew_s)

    def _pin_compute_threads(self, replica_id: str, plan: WorkerPlan) -> WorkerPlan:
        if plan.cpu_bind_env is None:
            return plan
        cpus = cpu_list(self.cpus.claim(replica_id, plan.resources.get("CPU")))
        log.info("replica %s: compute threads on CPUs %s", replica_id, cpus)
        return dataclasses.replace(plan, env={**plan.env, plan.cpu_bind_env: cpus})

    async def _launch(self, replica_id: str, plan: WorkerPlan) -> LocalProcess | PooledProcess:
        if self.warm_pool is not None:
            try:
                pooled = await self.warm_pool.launch(
                    plan, host=self.host, wait_s=self.pool_wait_s, cpus=self.cpus.placement(replica_id)
                )
            except WarmPoolError as exc:
                log.warning("replica %s: warm pool bind failed (%s); starting it the plain way", replica_id, exc)
                pooled = None
            if pooled is not None:
                log.info("replica %s: bound pooled process %s (pid %s)", replica_id, pooled.worker_id, pooled.pid)
                return pooled
        port = free_port(self.host)
        grpc_port = free_port(self.host) if plan.needs_grpc_port else None
        log_path = self.log_dir / f"{replica_id}.log"
        argv = plan.command(self.host, port, grpc_port)
        lease: Path | None = None
        if self.leases is not None:
            lease = self.leases.directory / f"{replica_id}.lease"
            _renew(lease)
            keeper = [self.python, "-m", "llmserve.workers.keeper", "--lease", str(lease),
                      "--grace", f"{self.leases.grace_s:g}", "--"]  # fmt: skip
            argv = [*keeper, *argv]
        process = await spawn_group_leader(
            argv,
            {**os.environ, **plan.env},
            log_path,
            self.cpus.placement(replica_id),
            with_parent=self.leases is None,
        )
        grpc_address = f"{self.host}:{grpc_port}" if grpc_port is not None else None
        cpus = plan.env.get(plan.cpu_bind_env, "") if plan.cpu_bind_env else ""
        return LocalProcess(process, f"http://{self.host}:{port}", log_path, grpc_address, lease, cpus)

    def describe(self) -> dict[str, Any]:
        pool = self.warm_pool
        claims = {replica: cpu_list(cpus) for replica, cpus in self.cpus.claims().items()}
        base: dict[str, Any] = {"name": self.name, "cpus": claims, "keepers": self.leases is not None}
        if pool is None:
            return {**base, "warm_pool": None}
        processes = [p.describe() for p in pool.processes()]
        return {**base, "warm_pool": {"size": pool.size, "processes": processes}}

    async def close(self) -> None:
        if self.warm_pool is not None:
            await self.warm_pool.close()
        await self.release()
        for task in list(self._releases):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
