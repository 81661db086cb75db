"""One supervised replica: start it, wait for health, publish it, watch it, restart it with backoff.

The endpoint is published only while the replica answers its health check, and withdrawn the moment the process
exits or fails its checks, so the gateway stops sending it requests at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controller.backends import Backend, ReplicaProcess
from controller.settings import ControllerSettings
from llmserve.endpoints import Endpoint
from llmserve.workers import WorkerPlan

log = logging.getLogger("llmserve.controller")

HealthCheck = Callable[[str, float], Awaitable[bool]]  # (url, timeout) -> healthy
BusyProbe = Callable[[str], Awaitable[float | None]]  # (replica url) -> requests running + waiting, None: unknown


class Publisher(Protocol):
    """Where a replica's endpoint goes while it is ready (the controller decides what gateways see)."""

    def publish(self, endpoint: Endpoint) -> None: ...

    def unpublish(self, service: str, replica_id: str) -> None: ...


class Journal(Protocol):
    """Where replicas that outlive the controller are written down, for the next controller to adopt."""

    def launched(self, replica: Replica, handle: dict[str, Any]) -> None: ...

    def ended(self, replica: Replica) -> None: ...


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class ReplicaRecord:
    """What status reports show about a replica."""

    replica_id: str
    state: ReplicaState = ReplicaState.STARTING
    revision: str = ""
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    ready_at: float | None = None
    last_exit: str | None = None
    adopted: bool = False
    log: str | None = None  # the replica process's log file (`llmserve logs`), when its backend writes one here

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.replica_id,
            "revision": self.revision,
            "state": self.state.value,
            "adopted": self.adopted,
            "url": self.url,
            "pid": self.pid,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "last_exit": self.last_exit,
            "log": self.log,
        }


class Replica:
    def __init__(
        self,
        replica_id: str,
        service: str,
        plan: WorkerPlan,
        backend: Backend,
        publisher: Publisher,
        settings: ControllerSettings,
        health: HealthCheck,
        on_ready: Callable[[], None] | None = None,
        busy: BusyProbe | None = None,
        *,
        revision: str = "",
        journal: Journal | None = None,
    ) -> None:
        self.service = service
        self.revision = revision
        self.plan = plan
        self.record = ReplicaRecord(replica_id, revision=revision)
        self._backend = backend
        self._publisher = publisher
        self._journal = journal
        self._settings = settings
        self._health = health
        self._on_ready = on_ready
        self._busy = busy
        self._stopping = asyncio.Event()
        self._process: ReplicaProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._adopted: ReplicaProcess | None = None
        self._detached = False
        self._check_now = asyncio.Event()
        self._stop_grace_s = settings.stop_grace_s  # SIGTERM to SIGKILL; a drain may lengthen it (stop())

    @property
    def replica_id(self) -> str:
        return self.record.replica_id

    @property
    def ready(self) -> bool:
        return self.record.state is ReplicaState.READY

    def start(self, adopted: ReplicaProcess | None = None) -> None:
        """Supervise the replica: launch it, or take over `adopted` (a healthy process a previous controller
        started) and serve it at once."""
        self._adopted = adopted
        self.record.adopted = adopted is not None
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"replica {self.replica_id}")

    def check_now(self) -> None:
        """A gateway could not use the replica: check its health now; one failed check restarts it."""
        self._check_now.set()

    async def detach(self) -> None:
        """End supervision and leave the process running (a controller stopping with --keep-workers)."""
        self._detached = True
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def stop(self, drain_s: float = 0.0) -> None:
        """Drain, then stop. The endpoint is withdrawn at once (gateways send the replica nothing new); requests in
        flight get up to `drain_s` to finish: watched with the busy probe (vLLM's running + waiting requests) where
        the worker answers it, else left to the worker's own drain on SIGTERM (llmserve's runtimes finish what they
        serve, then exit), with the rest of `drain_s` before SIGKILL (never less than settings.stop_grace_s). Then
        the process and its children are gone and supervision ends."""
        self.record.state = ReplicaState.STOPPING
        self._publisher.unpublish(self.service, self.replica_id)
        deadline = time.monotonic() + drain_s
        known = await self._drain(deadline) if drain_s > 0 else True
        # A worker whose load is unknown drains itself on SIGTERM: it gets the rest of the drain before SIGKILL.
        left = 0.0 if known else deadline - time.monotonic()
        self._stop_grace_s = max(self._settings.stop_grace_s, left)
        self._stopping.set()
        if self._task is not None:
            await self._task
        self.record.state = ReplicaState.STOPPED

    async def _drain(self, deadline: float) -> bool:
        """Until the replica has nothing in flight by its busy probe, or `deadline`; False if the probe cannot
        tell (the worker's own drain on SIGTERM takes over)."""
        process = self._process
        if process is None or not process.running():
            return True
        if self._busy is None:
            return False
        while time.monotonic() < deadline and process.running():
            busy = await self._busy(process.url)
            if busy is None:
                return False
            if busy == 0:
                return True
            await self._pause(min(0.5, max(0.0, deadline - time.monotonic())), process)
        if process.running():
            log.warning("replica %s: still busy at the end of its drain; stopping it anyway", self.replica_id)
        return True

    # -- supervision loop ---------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        settings = self._settings
        delay = settings.backoff_initial_s
        while not self._stopping.is_set():
            ran_ready_for = 0.0
            try:
                ran_ready_for = await self._run_once()
            except Exception as exc:  # a backend that cannot launch: log, back off, try again
                self.record.last_exit = f"launch failed: {exc}"
                log.error("replica %s: %s", self.replica_id, self.record.last_exit)
            finally:
                self._publisher.unpublish(self.service, self.replica_id)
                self._ready.clear()
                if self._process is not None and not self._detached:
                    await self._process.stop(self._stop_grace_s)
                    if self._journal is not None:
                        self._journal.ended(self)
                self._process = None
            if self._stopping.is_set():
                break
            if ran_ready_for >= settings.backoff_reset_after_s:
                delay = settings.backoff_initial_s
            self.record.restarts += 1
            self.record.state = ReplicaState.BACKOFF
            log.warning("replica %s restarts in %.1f s (%s)", self.replica_id, delay, self.record.last_exit)
            await self._pause(delay)
            delay = min(max(delay * 2, settings.backoff_initial_s), settings.backoff_max_s)

    async def _run_once(self) -> float:
        """Start the process and serve until it exits or fails; seconds it was ready."""
        record = self.record
        record.state = ReplicaState.STARTING
        record.ready_at = None
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            process = self._process = adopted
            log.info("replica %s adopted at %s (pid %s)", self.replica_id, process.url, process.pid)
        else:
            process = self._process = await self._backend.launch(self.replica_id, self.plan)
            log.info("replica %s starting at %s (pid %s)", self.replica_id, process.url, process.pid)
            record.adopted = False
        record.url, record.pid, record.started_at = process.url, process.pid, time.time()
        log_path = getattr(process, "log_path", None)  # local and pooled processes; Ray logs on its node
        record.log = str(log_path) if log_path and str(log_path) not in ("", ".") else None
        handle = process.handle()
        if handle is not None and self._journal is not None:
            self._journal.launched(self, handle)
        if adopted is None and not await self._await_healthy(process):
            return 0.0
        record.state = ReplicaState.READY
        record.ready_at = time.time()
        log.info("replica %s ready after %.1f s", self.replica_id, record.ready_at - record.started_at)
        self._publisher.publish(
            Endpoint(
                service=self.service,
                replica_id=self.replica_id,
                url=process.url,
                grpc_address=process.grpc_address,
                revision=self.revision,
            )
        )
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready()
        ready_since = time.monotonic()
        await self._watch(process)
        return time.monotonic() - ready_since

    async def _await_healthy(self, process: ReplicaProcess) -> bool:
        deadline = time.monotonic() + self.plan.startup_timeout_s
        health_url = process.url + self.plan.health_path
        while not self._stopping.is_set():
            if not process.running():
                self.record.last_exit = f"exited with status {await process.wait()} while starting"
                return False
            if await self._health(health_url, self._settings.health_timeout_s):
                return True
            if time.monotonic() > deadline:
                self.record.last_exit = f"not healthy within {self.plan.startup_timeout_s:g} s"
                return False
            await self._pause(self._settings.startup_poll_s, process)
        return False

    async def _watch(self, process: ReplicaProcess) -> None:
        settings = self._settings
        health_url = process.url + self.plan.health_path
        failures = 0
        while not self._stopping.is_set():
            await self._pause(settings.health_interval_s, process, self._check_now)
            if self._stopping.is_set():
                return
            if not process.running():
                self.record.last_exit = f"exited with status {await process.wait()}"
                return
            suspected = self._check_now.is_set()
            self._check_now.clear()
            if await self._health(health_url, settings.health_timeout_s):
                failures = 0
                continue
            failures += 1
            if suspected or failures >= settings.health_failures_to_restart:
                self.record.last_exit = (
                    "a gateway could not use it and its health check failed"
                    if suspected
                    else f"failed {failures} health checks in a row"
                )
                return

    async def _pause(
        self, seconds: float, process: ReplicaProcess | None = None, poke: asyncio.Event | None = None
    ) -> None:
        """Sleep up to `seconds`, waking early on stop(), when `process` exits, or when `poke` is set."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stopping.wait())]
        if process is not None:
            waits.append(asyncio.ensure_future(process.wait()))
        if poke is not None:
            waits.append(asyncio.ensure_future(poke.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
