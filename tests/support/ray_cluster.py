"""A real multi-node Ray cluster on one machine, for tests: `ray start` subprocesses on loopback addresses.

Each node is started by its own `ray start` in a new session, so every process of that node (GCS, raylet, agents,
actor workers) carries the session id of that `ray start` and can be found in /proc and killed by PID; `ray stop`
(which kills Ray processes machine-wide, other people's included) is never used. Everything lives in a private
temp dir (short: Unix socket paths are limited to 107 bytes), so no `ray_current_cluster` file outside it can
point a later `ray.init()` at a dead cluster. Token auth is on, with a random token passed in the environment
(nothing is written to ~/.ray).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmserve.workers.processes import free_port, session_members

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120.0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class RayNode:
    ip: str
    temp_dir: Path
    log: Path
    sid: int = 0  # the session of its `ray start`; every process of the node is in it

    def pids(self) -> list[int]:
        return session_members(self.sid) if self.sid else []

    def raylet_pid(self) -> int:
        (pid,) = [p for p in self.pids() if "/raylet/raylet " in cmdline(p)]
        return pid

    def alive(self) -> bool:
        try:
            self.raylet_pid()
        except ValueError:
            return False
        return True

    def kill_raylet(self) -> None:
        """What a machine failure looks like to Ray: the raylet disappears (SIGKILL; it ignores SIGTERM)."""
        os.kill(self.raylet_pid(), signal.SIGKILL)

    def kill(self, within_s: float = 15.0) -> list[int]:
        """SIGKILL every process of the node and wait until they are gone; what did not go."""
        deadline = time.monotonic() + within_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        return self.pids()


@dataclass
class LocalRayCluster:
    """Head on `head_ip`, more nodes with `add_node()`; `shutdown()` kills them all and removes the temp dir."""

    head_ip: str = "127.0.0.2"
    num_cpus: int = 2
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llr-", dir="/tmp")))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: list[RayNode] = field(default_factory=list)
    gcs_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.gcs_port}"

    @property
    def env(self) -> dict[str, str]:
        """What every node and every client of this cluster needs in its environment."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def start(self, worker_ips: tuple[str, ...] = ()) -> LocalRayCluster:
        """Start the head, then the worker nodes (one after the other: on a loaded machine a worker node that
        starts before the head's GCS answers gives up). On failure, whatever started is killed."""
        try:
            self.gcs_port = free_port(self.head_ip)
            head_args = [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port(self.head_ip)}",
            ]
            self._finish([self._spawn(self.head_ip, head_args)])
            for ip in worker_ips:
                self.add_node(ip)
        except BaseException:
            self.shutdown()
            raise
        return self

    def add_node(self, ip: str) -> RayNode:
        (node,) = self._finish([self._spawn(ip, [f"--address={self.address}"])])
        return node

    def _spawn(self, ip: str, args: list[str]) -> tuple[RayNode, subprocess.Popen[bytes]]:
        index = len(self.nodes)
        node = RayNode(ip=ip, temp_dir=self.root / f"n{index}", log=self.root / f"start-n{index}.log")
        self.nodes.append(node)
        # Fixed default ports would collide between two nodes on one machine (and with other people's Ray).
        ports = [
            f"--node-manager-port={free_port(ip)}",
            f"--object-manager-port={free_port(ip)}",
            f"--metrics-export-port={free_port(ip)}",
            f"--dashboard-agent-listen-port={free_port(ip)}",
            f"--dashboard-agent-grpc-port={free_port(ip)}",
            f"--runtime-env-agent-port={free_port(ip)}",
        ]
        cmd = [
            RAY, "start", *args, *ports,
            f"--node-ip-address={ip}",
            f"--temp-dir={node.temp_dir}",
            f"--num-cpus={self.num_cpus}",
            "--disable-usage-stats",
        ]  # fmt: skip
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        with open(node.log, "wb") as out:
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        node.sid = process.pid
        return node, process

    def _finish(self, starting: list[tuple[RayNode, subprocess.Popen[bytes]]]) -> list[RayNode]:
        for node, process in starting:
            try:
                code = process.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                code = -1
            if code != 0 or not node.alive():
                raise RuntimeError(f"ray start for {node.ip} failed ({code}):\n{node.log.read_text(errors='replace')}")
        return [node for node, _ in starting]

    def shutdown(self) -> list[int]:
        """Kill every process of every node (by session, SIGKILL) and remove the temp dir; pids that survived."""
        left = [pid for node in reversed(self.nodes) for pid in node.kill()]
        shutil.rmtree(self.root, ignore_errors=True)
        return left
