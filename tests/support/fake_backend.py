"""A controller backend whose "processes" are futures: crash, hang or heal them on command."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from llmserve.workers import WorkerPlan


class FakeProcess:
    _pids = itertools.count(1000)

    def __init__(self, replica_id: str, plan: WorkerPlan) -> None:
        self.replica_id = replica_id
        self.plan = plan
        self._pid = next(self._pids)
        self._url = f"http://fake-{self._pid}:1"
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.healthy = True
        self.stopped_with_grace: float | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def grpc_address(self) -> str | None:
        return None

    @property
    def pid(self) -> int | None:
        return self._pid

    def running(self) -> bool:
        return not self.exit.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self.exit)

    async def stop(self, grace_s: float) -> None:
        self.stopped_with_grace = grace_s
        self.crash(-15)

    def handle(self) -> dict[str, Any] | None:
        return {"pid": self._pid}

    def crash(self, status: int = 1) -> None:
        if not self.exit.done():
            self.exit.set_result(status)


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.launched: list[FakeProcess] = []
        self.start_healthy = True
        self.fail_launch = False
        self.adopted: list[FakeProcess] = []
        self.released = False

    async def start(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    async def launch(self, replica_id: str, plan: WorkerPlan) -> FakeProcess:
        if self.fail_launch:
            raise OSError("no such executable")
        process = FakeProcess(replica_id, plan)
        process.healthy = self.start_healthy
        self.launched.append(process)
        return process

    async def adopt(self, replica_id: str, handle: dict[str, Any]) -> FakeProcess | None:
        """A process of this backend (a fake machine shared by successive controllers) that is still running."""
        found = next((p for p in self.launched if p.pid == handle.get("pid") and p.running()), None)
        if found is not None:
            self.adopted.append(found)
        return found

    async def release(self) -> None:
        self.released = True

    async def close(self) -> None:
        return None

    def by_url(self, url: str) -> FakeProcess | None:
        return next((p for p in self.launched if url.startswith(p.url)), None)

    async def health(self, url: str, limit_s: float) -> bool:
        process = self.by_url(url)
        return process is not None and process.running() and process.healthy

    def live(self) -> list[FakeProcess]:
        return [p for p in self.launched if p.running()]
