"""Graceful drain of a gateway process (SIGTERM or Ctrl-C): finish what is in flight, take nothing new, then exit.

`DataPlane.stop()` begins it: from that moment `/ready` says 503, and the HTTP server stops listening (new
connections are refused) and closes its idle kept-alive connections; a connection with a response in flight is
closed once that response ends. Requests in flight go on, streams included, and so do requests the activator holds
(a replica may still become ready). At the drain deadline (`GatewaySettings.drain_timeout_s`, 30 s by default)
every request still in flight is cut, the one way a client can tell from a finished answer: a response not begun
gets 503 + Retry-After, a stream already begun gets one error frame in OpenAI's envelope and `[DONE]` (after its last
whole event), and the upstream request is aborted, so its worker stops generating. A drain of 0 cuts at once.

The request skeletons (`gateway/dispatch.py::Exchange`, `gateway/graph/asgi.py::answer_client`) register the task
serving each request; a task the drain cancelled is told apart from a client that went away with `cut_here`.
"""

from __future__ import annotations

import asyncio

from llmserve.protocol.errors import ServingError

SHUTTING_DOWN = "shutting_down"


def shutting_down() -> ServingError:
    """What a request cut by the drain deadline gets."""
    return ServingError(
        503,
        "The gateway is shutting down; retry the request.",
        code=SHUTTING_DOWN,
        headers={"retry-after": "1"},
    )


class Drain:
    """The requests a gateway process is serving, and the drain that ends them (one event loop: no locks)."""

    def __init__(self) -> None:
        self.draining = False
        self._serving: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event | None = None

    @property
    def in_flight(self) -> int:
        return len(self._serving)

    def readiness(self) -> str | None:
        """Why /ready must say 503: the process is draining."""
        return "the gateway is shutting down (draining)" if self.draining else None

    def track(self) -> asyncio.Task[object] | None:
        """Register the current task as serving a request; pass what it returns to `untrack` when it ends."""
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        return task

    def untrack(self, task: asyncio.Task[object] | None) -> None:
        if task is None:
            return
        self._serving.discard(task)
        self._cut.discard(task)
        if not self._serving and self._idle is not None:
            self._idle.set()

    def cut_here(self, task: asyncio.Task[object] | None) -> bool:
        """Whether `task` (being cancelled) was cut by the drain; if so its cancellation is taken back, so that the
        skeleton can still answer the client (a 503, or an error frame)."""
        if task is None or task not in self._cut:
            return False
        task.uncancel()
        return True

    def begin(self, timeout_s: float) -> None:
        """Start draining: /ready fails now, whatever is still in flight after `timeout_s` is cut."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        if timeout_s <= 0:
            self.cut()
        else:
            self._timer = loop.call_later(timeout_s, self.cut)

    def cut(self) -> None:
        """End every request still in flight (each skeleton answers its client as it unwinds)."""
        self._timer = None
        for task in list(self._serving):
            if not task.done() and task not in self._cut:
                self._cut.add(task)
                task.cancel()

    async def wait_idle(self) -> None:
        """Until no request is in flight."""
        if not self._serving:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()
