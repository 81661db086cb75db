"""The backend seam: start a replica from a WorkerPlan; supervision (health, restarts) is the controller's."""

from __future__ import annotations

from typing import Any, Protocol

from llmserve.workers import WorkerPlan


class ReplicaProcess(Protocol):
    @property
    def url(self) -> str:
        """http://host:port the replica serves on."""
        ...

    @property
    def grpc_address(self) -> str | None:
        """host:port of the replica's gRPC server, when its plan asked for one."""
        ...

    @property
    def pid(self) -> int | None: ...

    def running(self) -> bool: ...

    async def wait(self) -> int | None:
        """Until the replica exits; its exit status."""
        ...

    async def stop(self, grace_s: float) -> None:
        """Stop it and everything it started: SIGTERM, then SIGKILL after `grace_s`."""
        ...

    def handle(self) -> dict[str, Any] | None:
        """What a later controller needs to re-adopt this replica (`Backend.adopt`), or None when it cannot be
        (a warm-pool process, a Ray actor: they end with the controller that started them)."""
        ...


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Before the first launch (e.g. fill a warm pool)."""
        ...

    async def launch(self, replica_id: str, plan: WorkerPlan) -> ReplicaProcess: ...

    async def adopt(self, replica_id: str, handle: dict[str, Any]) -> ReplicaProcess | None:
        """Take over a replica a previous controller launched (from its `handle()`), if its process is still there;
        None otherwise. The caller checks its health before trusting it."""
        ...

    async def release(self) -> None:
        """Let go of every replica without stopping it (`llmserve controller --keep-workers`): their leases are no
        longer renewed, so a controller that does not adopt them within the grace period leaves them to stop."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """What status reports show about the backend."""
        ...
