"""Replicas as child processes on this machine, each in its own process group on a free loopback port.

No orphans: a replica dies with its parent (PR_SET_PDEATHSIG), and stopping one signals its whole process group
(vLLM's API server starts an engine-core and a worker process under it). With a warm pool, a vLLM replica is a
pooled process that has imported vLLM already and binds to the model in seconds (`llmserve.workers.warm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from controller.backends.cpus import CpuAllocator, cpu_list
from llmserve.workers import WorkerPlan
from llmserve.workers.processes import GroupLeader, free_port, spawn_group_leader
from llmserve.workers.warm import PooledProcess, WarmPool, WarmPoolError

log = logging.getLogger("llmserve.controller")


class LocalProcess(GroupLeader):
    def __init__(
        self, process: asyncio.subprocess.Process, url: str, log_path: Path, grpc_address: str | None = None
    ) -> None:
        super().__init__(process)
        self._url = url
        self._grpc_address = grpc_address
        self.log_path = log_path

    @property
    def url(self) -> str:
        return self._url

    @property
    def grpc_address(self) -> str | None:
        return self._grpc_address


class LocalBackend:
    """`warm_pool`: started with the backend and closed with it; a vLLM plan takes an idle pooled process when
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
    ) -> None:
        self.host = host
        self.log_dir = log_dir
        self.warm_pool = warm_pool
        self.pool_wait_s = pool_wait_s
        self.cpus = CpuAllocator(cpus if cpus is not None else os.sched_getaffinity(0))
        if warm_pool is not None and warm_pool.cpus is None:
            warm_pool.cpus = self.cpus.placement  # pooled processes import away from busy model runners
        self._releases: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.warm_pool is not None:
            await self.warm_pool.start()

    async def launch(self, replica_id: str, plan: WorkerPlan) -> LocalProcess | PooledProcess:
        plan = self._pin_compute_threads(replica_id, plan)
        try:
            process = await self._launch(replica_id, plan)
        except BaseException:
            self.cpus.release(replica_id)
            raise
        if plan.cpu_bind_env is not None:
            release = asyncio.get_running_loop().create_task(self._release_cpus(replica_id, process))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
        return process

    def _pin_compute_threads(self, replica_id: str, plan: WorkerPlan) -> WorkerPlan:
        if plan.cpu_bind_env is None:
            return plan
        cpus = cpu_list(self.cpus.claim(replica_id, plan.resources.get("CPU")))
        log.info("replica %s: compute threads on CPUs %s", replica_id, cpus)
        return dataclasses.replace(plan, env={**plan.env, plan.cpu_bind_env: cpus})

    async def _release_cpus(self, replica_id: str, process: LocalProcess | PooledProcess) -> None:
        await process.wait()
        self.cpus.release(replica_id)

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
        process = await spawn_group_leader(
            plan.command(self.host, port, grpc_port),
            {**os.environ, **plan.env},
            log_path,
            self.cpus.placement(replica_id),
        )
        grpc_address = f"{self.host}:{grpc_port}" if grpc_port is not None else None
        return LocalProcess(process, f"http://{self.host}:{port}", log_path, grpc_address)

    def describe(self) -> dict[str, Any]:
        pool = self.warm_pool
        claims = {replica: cpu_list(cpus) for replica, cpus in self.cpus.claims().items()}
        if pool is None:
            return {"name": self.name, "warm_pool": None, "cpus": claims}
        processes = [p.describe() for p in pool.processes()]
        return {"name": self.name, "warm_pool": {"size": pool.size, "processes": processes}, "cpus": claims}

    async def close(self) -> None:
        if self.warm_pool is not None:
            await self.warm_pool.close()
        for release in list(self._releases):
            release.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await release
