"""Worker processes on one machine: each leads its own process group and dies with its parent, and stopping one
takes its whole group down (vLLM's API server starts an engine-core and a worker process under it).

Shared by every launcher (the local backend, the Ray actor that hosts a replica, the warm pool). Stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent (thread) exits (PR_SET_PDEATHSIG)."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid` (from /proc)."""
    return _live_where(2, pgid)


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is `sid` (from /proc)."""
    return _live_where(3, sid)


def _live_where(field: int, value: int) -> list[int]:
    """Processes whose /proc/PID/stat field `field` (counted after the command name; 2: pgrp, 3: session) is
    `value`, zombies left out."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] != b"Z":
            members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def spawn_group_leader(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cpus: Collection[int] | None = None,
    *,
    with_parent: bool = True,
) -> asyncio.subprocess.Process:
    """Start `argv` as the leader of a new process group (and session) that dies with us unless `with_parent` is
    false; stdout and stderr go to `log_path`; `cpus`: the CPUs it (and what it starts) may run on (default: ours)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def prepare_child() -> None:  # pragma: no cover - runs in the forked child, before exec
        if with_parent:
            die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=prepare_child,
        )
    finally:
        os.close(log_fd)


async def stop_group(process: asyncio.subprocess.Process, grace_s: float, *, terminate: bool = True) -> int:
    """SIGTERM the group `process` leads (unless the caller already did: `terminate=False`), SIGKILL what is left
    after `grace_s`, and return once the kernel has taken every member down (children that outlived the leader
    included): a stopped process leaves none behind."""
    pgid = process.pid
    if process.returncode is None:
        if terminate:
            signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace_s)
    signal_group(pgid, signal.SIGKILL)
    code = await process.wait()
    for _ in range(100):
        if not group_members(pgid):
            break
        await asyncio.sleep(0.05)
    return code


class GroupLeader:
    """A started process that leads its own process group: the surface every backend's replica process shares."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def running(self) -> bool:
        return self._process.returncode is None

    async def wait(self) -> int | None:
        return await self._process.wait()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the group, SIGKILL after `grace_s`; returns once none of it is left."""
        await stop_group(self._process, grace_s)

    def handle(self) -> dict[str, Any] | None:
        """What a later controller would need to adopt this process; None: it cannot be (it dies with us)."""
        return None


class AdoptedGroup:
    """A process group led by a process we did not start (a replica a previous controller started): the same
    surface as GroupLeader, watched through a pidfd (it cannot be waited for; its exit status is unknown)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._exited = asyncio.Event()
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited.set()
            return
        asyncio.get_running_loop().add_reader(self._fd, self._on_exit)

    def _on_exit(self) -> None:
        self._close()
        self._exited.set()

    def _close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    @property
    def pid(self) -> int | None:
        return self._pid

    def running(self) -> bool:
        return not self._exited.is_set() and alive(self._pid)

    async def wait(self) -> int | None:
        await self._exited.wait()
        return None

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the group, SIGKILL after `grace_s`; returns once none of it is left."""
        if self.running():
            signal_group(self._pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), grace_s)
        signal_group(self._pid, signal.SIGKILL)
        for _ in range(100):
            if not group_members(self._pid):
                break
            await asyncio.sleep(0.05)
        self._close()
        self._exited.set()
