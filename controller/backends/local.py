"""Replicas as child processes on this machine, each in its own process group on a free loopback port.

No orphans: a replica dies with its parent (PR_SET_PDEATHSIG), and stopping one signals its whole process group
(vLLM's API server starts an engine-core and a worker process under it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
from pathlib import Path

from llmserve.workers import WorkerPlan

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalProcess:
    def __init__(
        self, process: asyncio.subprocess.Process, url: str, log_path: Path, grpc_address: str | None = None
    ) -> None:
        self._process = process
        self._url = url
        self._grpc_address = grpc_address
        self.log_path = log_path

    @property
    def url(self) -> str:
        return self._url

    @property
    def grpc_address(self) -> str | None:
        return self._grpc_address

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def running(self) -> bool:
        return self._process.returncode is None

    async def wait(self) -> int | None:
        return await self._process.wait()

    async def stop(self, grace_s: float) -> None:
        pgid = self._process.pid  # the replica leads its own process group (start_new_session)
        if self.running():
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), grace_s)
        # Whatever is left of the group (the leader, or children that outlived it) is killed, and we wait until
        # the kernel has taken them all down: a stopped replica leaves no process behind.
        _signal_group(pgid, signal.SIGKILL)
        await self._process.wait()
        for _ in range(100):
            if not group_members(pgid):
                return
            await asyncio.sleep(0.05)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalBackend:
    name = "local"

    def __init__(self, host: str = "127.0.0.1", log_dir: Path = Path(".llmserve/logs")) -> None:
        self.host = host
        self.log_dir = log_dir

    async def launch(self, replica_id: str, plan: WorkerPlan) -> LocalProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port(self.host)
        grpc_port = free_port(self.host) if plan.needs_grpc_port else None
        log_path = self.log_dir / f"{replica_id}.log"
        env = {**os.environ, **plan.env}
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                *plan.command(self.host, port, grpc_port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(log_fd)
        grpc_address = f"{self.host}:{grpc_port}" if grpc_port is not None else None
        return LocalProcess(process, f"http://{self.host}:{port}", log_path, grpc_address)

    async def close(self) -> None:
        return None
