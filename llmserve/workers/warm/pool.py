"""WarmPool: pre-started, model-less vLLM processes that bind to a model in seconds instead of a minute.

A plain `vllm api_server` start spends most of its time importing (the API server, then its engine-core process,
then that process's model-runner worker, each importing torch and vLLM again). A pooled process has imported all of
it before anyone asks; binding it forks the engine processes from it, so a model serves a few seconds after the bind
command. This module is the client side: it starts and supervises pooled processes, hands one out, binds it, and
starts a replacement in the background. It imports nothing heavy.

    pool = WarmPool(size=1, log_dir=Path(".llmserve/logs"))
    await pool.start()
    process = await pool.acquire()            # None: nothing idle (size 0, still importing, or all handed out)
    if process is not None:
        await pool.bind(process, BindRequest.from_plan(plan), host="127.0.0.1")
        url = await process.wait_serving()    # or poll url + "/health" like any replica
    ...
    await pool.close()                        # every process it started is gone afterwards

A bound `PooledProcess` has the replica-process surface (`url`, `pid`, `running()`, `wait()`, `stop(grace_s)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmserve.workers.plan import WorkerPlan
from llmserve.workers.processes import GroupLeader, free_port, spawn_group_leader
from llmserve.workers.warm.protocol import MAX_LINE, decode, encode

log = logging.getLogger("llmserve.workers.warm")

VLLM_SERVER_MODULES = frozenset({"vllm.entrypoints.openai.api_server", "vllm.entrypoints.launchers.api_server.entry"})

DEFAULT_ENV: Mapping[str, str] = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Environment of every pooled process (the same quiet, offline defaults `vllm_plan` gives a plain start)."""

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # where `llmserve` is importable from


class WarmPoolError(RuntimeError):
    """A pooled process could not be bound, or failed or exited while binding."""


class NotWarmable(ValueError):
    """The plan does not start vLLM's OpenAI API server, so a pooled process cannot serve it."""


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # importing vLLM
    IDLE = "idle"  # imported, waiting in the pool
    ACQUIRED = "acquired"  # handed out, not bound yet
    BINDING = "binding"  # creating the engine
    SERVING = "serving"  # GET /health answered 200
    FAILED = "failed"  # reported an error (it exits)
    EXITED = "exited"


_BINDING_STATES = (WorkerState.ACQUIRED, WorkerState.BINDING)


@dataclass(frozen=True)
class BindRequest:
    """What to serve: `args` are `vllm.entrypoints.openai.api_server` flags without `--host`/`--port`."""

    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cpus: tuple[int, ...] | None = None  # the CPUs the bound process and its engine run on (None: as it is)

    @classmethod
    def from_plan(cls, plan: WorkerPlan) -> BindRequest:
        """The vLLM flags and environment of a plan made by `llmserve.workers.vllm.vllm_plan`."""
        argv = list(plan.argv)
        for i in range(len(argv) - 1):
            if argv[i] == "-m" and argv[i + 1] in VLLM_SERVER_MODULES:
                return cls(args=tuple(_without_address(argv[i + 2 :])), env=dict(plan.env))
        raise NotWarmable(f"not a vLLM OpenAI API server command: {' '.join(argv[:4])} ...")

    def command(self, host: str, port: int) -> list[str]:
        return [*_without_address(list(self.args)), "--host", host, "--port", str(port)]


def _without_address(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--host", "--port"):
            skip = True
        elif not arg.startswith(("--host=", "--port=")):
            out.append(arg)
    return out


class PooledProcess(GroupLeader):
    """One pooled process; once bound, a replica process like any other (it leads its own process group)."""

    def __init__(self, worker_id: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        super().__init__(process)
        self.worker_id = worker_id
        self.log_path = log_path
        self.state = WorkerState.STARTING
        self.started_at = time.monotonic()
        self.idle_at: float | None = None
        self.acquired_at: float | None = None
        self.preload_s: float | None = None
        self.vllm_version: str | None = None
        self.bind_sent_at: float | None = None
        self.bind_s: float | None = None
        self.serving_at: float | None = None
        """Seconds from the bind command to the first 200 from /health, as the worker measured it."""
        self.ignored_env: list[str] = []
        self.error: str | None = None
        self.returncode: int | None = None
        self._url: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._changed = asyncio.Condition()
        self._on_change: Callable[[], None] = lambda: None

    # -- the replica-process surface ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._url is None:
            raise WarmPoolError(f"pooled process {self.worker_id} is not bound")
        return self._url

    @property
    def grpc_address(self) -> None:
        """vLLM's OpenAI server has no gRPC port."""
        return None

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM its process group (it and the engine processes it forked), SIGKILL after `grace_s`."""
        await super().stop(grace_s)
        self._close_channel()

    # -- binding -------------------------------------------------------------------------------------------------
    async def wait_serving(self, timeout_s: float | None = None) -> str:
        """Until the bound process answers GET /health with 200; its URL. WarmPoolError if it fails or exits."""
        await self._wait_for(
            lambda: self.state in (WorkerState.SERVING, WorkerState.FAILED, WorkerState.EXITED), timeout_s
        )
        if self.state is not WorkerState.SERVING:
            raise WarmPoolError(f"pooled process {self.worker_id} {self._failure()}")
        return self.url

    def describe(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "pid": self.pid,
            "state": self.state.value,
            "url": self._url,
            "preload_s": self.preload_s,
            "bind_s": self.bind_s,
            "error": self.error,
            "log": str(self.log_path),
        }

    def _failure(self) -> str:
        if self.error:
            return f"failed: {self.error} (log: {self.log_path})"
        return f"exited with status {self.returncode} (log: {self.log_path})"

    async def _wait_for(self, predicate: Callable[[], bool], timeout_s: float | None) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout_s)

    async def _set_state(self, state: WorkerState) -> None:
        async with self._changed:
            if self.state not in (WorkerState.FAILED, WorkerState.EXITED) or state is WorkerState.EXITED:
                self.state = state
            self._changed.notify_all()
        self._on_change()

    def _send(self, message: Mapping[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            raise WarmPoolError(f"pooled process {self.worker_id} has no control connection")
        self._writer.write(encode(message))

    def _close_channel(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "idle":
            self.idle_at = time.monotonic()
            self.preload_s = float(message.get("preload_s") or 0.0)
            self.vllm_version = str(message.get("vllm_version"))
            if self.state is WorkerState.STARTING:
                await self._set_state(WorkerState.IDLE)
        elif kind == "binding":
            self.ignored_env = [str(name) for name in message.get("ignored_env") or []]
            if self.ignored_env:
                log.warning(
                    "pooled process %s ignores %s (import-time variables): start the pool with them",
                    self.worker_id,
                    ", ".join(self.ignored_env),
                )
            await self._set_state(WorkerState.BINDING)
        elif kind == "serving":
            self.bind_s = float(message.get("bind_s") or 0.0)
            self.serving_at = time.monotonic()
            await self._set_state(WorkerState.SERVING)
        elif kind == "failed":
            self.error = str(message.get("error"))
            log.error("pooled process %s failed: %s (log: %s)", self.worker_id, self.error, self.log_path)
            await self._set_state(WorkerState.FAILED)


class WarmPool:
    """Keeps `size` pooled processes importing or idle; `size=0` is no pool (`acquire()` always returns None).

    `python`: the interpreter that has vLLM (default: this one). `env`: added to every pooled process's environment
    on top of `DEFAULT_ENV`; variables read at import time (see `protocol.IMPORT_TIME_ENV`) must be given here,
    not at bind. `preload`: more modules to import while idle (e.g. a model architecture's vLLM module).
    `start_timeout_s`: a process not idle by then is stopped and replaced; failures back off up to `max_backoff_s`.
    `replenish_delay_s`, `replenish_after_s`: the replacement for an acquired process starts `replenish_delay_s`
    after that process serves (at once if it fails), or `replenish_after_s` after it was acquired, whichever comes
    first — so that the replacement's imports do not compete with the bound process's first requests.
    `cpus`: called at each start, the CPUs a new process imports on (None: all of ours); a bind can move it.
    """

    def __init__(
        self,
        size: int,
        *,
        python: str | None = None,
        log_dir: Path = Path(".llmserve/logs"),
        env: Mapping[str, str] | None = None,
        preload: Sequence[str] = (),
        start_timeout_s: float = 600.0,
        max_backoff_s: float = 60.0,
        replenish_after_s: float = 60.0,
        replenish_delay_s: float = 5.0,
        cpus: Callable[[], Collection[int] | None] | None = None,
    ) -> None:
        if size < 0:
            raise ValueError("pool size must be >= 0")
        self._size = size
        self.python = python or sys.executable
        self.log_dir = log_dir
        self.env = {**DEFAULT_ENV, **(env or {})}
        self.preload = tuple(preload)
        self.start_timeout_s = start_timeout_s
        self.max_backoff_s = max_backoff_s
        self.replenish_after_s = replenish_after_s
        self.replenish_delay_s = replenish_delay_s
        self.cpus = cpus
        self._pooled: list[PooledProcess] = []  # starting or idle: the pool's own
        self._handed_out: list[PooledProcess] = []  # acquired: the caller's, still stopped by close()
        self._by_id: dict[str, PooledProcess] = {}
        self._changed = asyncio.Event()
        self._idle_changed = asyncio.Condition()
        self._failures = 0
        self._next_start_at = 0.0
        self._closed = False
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        return self._size

    @property
    def control_socket(self) -> Path | None:
        return None if self._dir is None else self._dir / "control.sock"

    async def start(self) -> None:
        """Start filling the pool (in the background; `wait_idle` waits for it). No-op for size 0."""
        if self._size == 0 or self._maintainer is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="llmserve-warm-"))  # 0700: only this user may bind workers
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=self._dir / "control.sock", limit=MAX_LINE
        )
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain(), name="warm pool")

    async def resize(self, size: int) -> None:
        """Change the number of processes kept ready; extra idle ones are stopped."""
        if size < 0:
            raise ValueError("pool size must be >= 0")
        self._size = size
        if size > 0 and self._maintainer is None and not self._closed:
            await self.start()
        self._changed.set()

    def processes(self) -> list[PooledProcess]:
        """Every live process the pool started: pooled and handed out."""
        return [p for p in (*self._pooled, *self._handed_out) if p.state is not WorkerState.EXITED]

    def idle_count(self) -> int:
        return sum(p.state is WorkerState.IDLE for p in self._pooled)

    async def wait_idle(self, count: int | None = None, timeout_s: float | None = None) -> None:
        """Until `count` (default: size) processes are idle."""
        want = self._size if count is None else count
        async with self._idle_changed:
            await asyncio.wait_for(self._idle_changed.wait_for(lambda: self.idle_count() >= want), timeout_s)

    async def acquire(self, wait_s: float = 0.0) -> PooledProcess | None:
        """Take an idle process out of the pool (a replacement starts in the background); None if none is idle
        within `wait_s` seconds."""
        if self._size == 0 or self._closed:
            return None
        if not self.idle_count() and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await self.wait_idle(1, wait_s)
        idle = [p for p in self._pooled if p.state is WorkerState.IDLE and p.running()]
        if not idle:
            return None
        process = min(idle, key=lambda p: p.idle_at or 0.0)
        self._pooled.remove(process)
        self._handed_out.append(process)
        process.acquired_at = time.monotonic()
        await process._set_state(WorkerState.ACQUIRED)
        self._changed.set()
        return process

    async def release(self, process: PooledProcess) -> None:
        """Give back an acquired process that was not bound."""
        if process.state is WorkerState.ACQUIRED and process.running() and process in self._handed_out:
            self._handed_out.remove(process)
            self._pooled.append(process)
            await process._set_state(WorkerState.IDLE)
            self._changed.set()

    async def bind(
        self,
        process: PooledProcess,
        request: BindRequest,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        timeout_s: float = 60.0,
    ) -> PooledProcess:
        """Tell an acquired process to serve `request` on host:port (a free port if None). Returns once the process
        accepted the arguments and is creating the engine; `wait_serving()` (or polling /health) tells when it
        serves. WarmPoolError (and the process is stopped) if it rejects them or dies."""
        if process.state is not WorkerState.ACQUIRED:
            raise WarmPoolError(f"pooled process {process.worker_id} is {process.state.value}, not acquired")
        port = free_port(host) if port is None else port
        host_part = f"[{host}]" if ":" in host else host
        process._url = f"http://{host_part}:{port}"
        process.bind_sent_at = time.monotonic()
        try:
            bind: dict[str, Any] = {"type": "bind", "args": request.command(host, port), "env": dict(request.env)}
            if request.cpus:
                bind["cpus"] = list(request.cpus)
            process._send(bind)
            await process._wait_for(lambda: process.state is not WorkerState.ACQUIRED, timeout_s)
        except (WarmPoolError, TimeoutError) as exc:
            await process.stop(0)
            raise WarmPoolError(f"pooled process {process.worker_id} did not accept the bind: {exc!r}") from exc
        if process.state in (WorkerState.FAILED, WorkerState.EXITED):
            await process.stop(0)
            raise WarmPoolError(f"pooled process {process.worker_id} {process._failure()}")
        return process

    async def launch(
        self,
        plan: WorkerPlan,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        wait_s: float = 0.0,
        cpus: Collection[int] | None = None,
    ) -> PooledProcess | None:
        """acquire + bind for a `vllm_plan`: a process creating the engine, or None (no idle process, or a plan a
        pooled process cannot serve) — then start the plan the plain way. When nothing is idle but a process is
        still importing, waits up to `wait_s` for it (a plain start takes longer than its remaining imports)."""
        try:
            request = BindRequest.from_plan(plan)
        except NotWarmable:
            return None
        if cpus:
            request = dataclasses.replace(request, cpus=tuple(sorted(cpus)))
        importing = any(p.state is WorkerState.STARTING and p.running() for p in self._pooled)
        process = await self.acquire(wait_s if importing else 0.0)
        if process is None:
            return None
        return await self.bind(process, request, host=host, port=port)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop every process the pool started (idle, importing, and handed out) and remove the control socket."""
        self._closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        everyone = [*self._pooled, *self._handed_out]
        await asyncio.gather(*(p.stop(grace_s) for p in everyone))
        for watcher in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._pooled.clear()
        self._handed_out.clear()

    # -- internals ------------------------------------------------------------------------------------------------
    def command(self, worker_id: str) -> list[str]:
        """The argv of a pooled process (for launchers other than this pool, e.g. a Ray actor's subprocess)."""
        argv = [self.python, "-m", "llmserve.workers.warm", "--control-socket", str(self.control_socket)]
        argv += ["--worker-id", worker_id]
        for module in self.preload:
            argv += ["--preload", module]
        return argv

    async def _spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        worker_id = secrets.token_hex(4)
        log_path = self.log_dir / f"warm-{worker_id}.log"
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        child = await spawn_group_leader(self.command(worker_id), env, log_path, self.cpus() if self.cpus else None)
        process = PooledProcess(worker_id, child, log_path)
        process._on_change = self._notify_idle_changed
        self._pooled.append(process)
        self._by_id[worker_id] = process
        watcher = asyncio.get_running_loop().create_task(self._watch(process), name=f"warm {worker_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("warm pool: started pooled process %s (pid %s, log %s)", worker_id, child.pid, log_path)

    def _notify_idle_changed(self) -> None:
        self._changed.set()

        async def notify() -> None:
            async with self._idle_changed:
                self._idle_changed.notify_all()

        loop = asyncio.get_running_loop()
        task = loop.create_task(notify())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, process: PooledProcess) -> None:
        returncode = await process.wait()
        process.returncode = returncode
        was = process.state
        await process._set_state(WorkerState.EXITED)
        process._close_channel()
        self._by_id.pop(process.worker_id, None)
        if process in self._pooled:
            self._pooled.remove(process)
            if was is WorkerState.STARTING and not self._closed:
                self._failures += 1
                delay = min(self.max_backoff_s, 2.0 ** (self._failures - 1))
                self._next_start_at = time.monotonic() + delay
                log.error(
                    "warm pool: process %s exited with %s while importing (log: %s); next try in %.0f s",
                    process.worker_id,
                    returncode,
                    process.log_path,
                    delay,
                )
        elif process in self._handed_out:
            self._handed_out.remove(process)
        self._changed.set()

    async def _maintain(self) -> None:
        while not self._closed:
            self._changed.clear()
            now = time.monotonic()
            for process in list(self._pooled):
                if process.state is WorkerState.IDLE:
                    self._failures = 0
                elif process.state is WorkerState.STARTING and now - process.started_at > self.start_timeout_s:
                    log.error(
                        "warm pool: process %s not idle after %.0f s; stopping it",
                        process.worker_id,
                        now - process.started_at,
                    )
                    await process.stop(0)
            live = [p for p in self._pooled if p.running()]
            # A process being bound holds its slot until it has served for `replenish_delay_s` (or for
            # `replenish_after_s` after it was acquired): its replacement would otherwise import on the same cores
            # while it loads the model and answers its first requests.
            binding = [p for p in self._handed_out if p.running() and self._holds_slot(p, now)]
            if len(live) + len(binding) < self._size and now >= self._next_start_at:
                try:
                    await self._spawn()
                except OSError as exc:  # no such interpreter, no log dir...: retry with backoff
                    self._failures += 1
                    self._next_start_at = now + min(self.max_backoff_s, 2.0 ** (self._failures - 1))
                    log.error("warm pool: cannot start a pooled process: %s", exc)
                continue
            if len(live) > self._size:
                extra = sorted(live, key=lambda p: p.state is WorkerState.IDLE)[: len(live) - self._size]
                for process in extra:
                    self._pooled.remove(process)
                    self._handed_out.append(process)  # still stopped by close() if stop() is interrupted
                    await process.stop(2.0)
                continue
            wait_s = max(0.05, min(1.0, self._next_start_at - now)) if len(live) < self._size else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait_s)

    def _holds_slot(self, process: PooledProcess, now: float) -> bool:
        if now - (process.acquired_at or 0.0) >= self.replenish_after_s:
            return False
        if process.state in _BINDING_STATES:
            return True
        return process.state is WorkerState.SERVING and now - (process.serving_at or 0.0) < self.replenish_delay_s

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        process: PooledProcess | None = None
        try:
            hello = decode(await reader.readline())
            process = self._by_id.get(str(hello.get("worker_id")))
            if hello["type"] != "started" or process is None or process._writer is not None:
                return
            process._writer = writer
            while line := await reader.readline():
                await process._on_message(decode(line))
        except (ValueError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.warning("warm pool: bad control connection: %r", exc)
        finally:
            if process is None or process._writer is not writer:
                writer.close()
