"""Run an ASGI app on a real loopback port in a background thread (real HTTP for real clients)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from llmserve.frontdoor import FrontDoorSettings, uvicorn_config


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", front_door: FrontDoorSettings | None = None) -> None:
        """`front_door`: serve through the project's own uvicorn config (uvicorn_config) with these limits;
        None: plain uvicorn, as a worker that is not ours would be."""
        options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "access_log": False}
        if front_door is not None:
            config = uvicorn_config(app, host=host, port=0, front_door=front_door, **options)
        else:
            config = uvicorn.Config(app, host=host, port=0, **options)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        task = asyncio.create_task(self.server.serve())
        while not self.server.started and not task.done():  # noqa: ASYNC110 - uvicorn has only a flag
            await asyncio.sleep(0.005)
        self._started.set()
        await task

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(10) or not self.server.started:
            raise RuntimeError("test server did not start")
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop and wait for it (to touch loop-owned state safely)."""
        assert self.loop is not None
        done = threading.Event()
        result: list[Any] = []

        def run() -> None:
            result.append(fn(*args))
            done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(5)
        return result[0]

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


@contextmanager
def serving(app: Any, front_door: FrontDoorSettings | None = None) -> Iterator[ServerThread]:
    server = ServerThread(app, front_door=front_door).start()
    try:
        yield server
    finally:
        server.stop()
