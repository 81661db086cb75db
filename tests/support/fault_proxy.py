"""A fault-injecting TCP proxy to put in front of any worker (or any server): latency, a stall before the first
response byte, a stall after N response bytes, a reset after N response bytes, refused connections.

    with fault_proxy(worker.url) as proxy:          # proxy.url goes where the worker's URL would
        proxy.set(Fault(stall_after_bytes=300))     # from now on, open connections included
        ...
        proxy.release()                             # stalled connections go on

Faults act on what the server sends back (the response); latency delays every chunk both ways. It knows nothing
of HTTP: "N bytes" counts response heads too, from the moment the fault was set (on connections already open as
well: a client's kept-alive connection gets the new fault at its next response). A stall lasts until `release()`
or until the client leaves. `refuse` closes the listening socket (connect() is refused, as for a worker that is
gone) and reopens it on the same port when a later fault does not refuse. The proxy runs its own event loop in a
thread, so it works under synchronous and asynchronous tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Fault:
    latency_s: float = 0.0  # added before each chunk is passed on, both directions
    stall_before_first_byte: bool = False  # hold the response until release()
    stall_after_bytes: int | None = None  # pass this many response bytes, then hold the rest until release()
    reset_after_bytes: int | None = None  # pass this many response bytes, then reset both connections (RST)
    refuse: bool = False  # nothing listens: connect() is refused


NO_FAULT = Fault()


class FaultProxy:
    def __init__(self, target_url: str, host: str = "127.0.0.1") -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = host
        self.port = 0
        self.fault = NO_FAULT
        self.accepted = 0  # connections accepted so far
        self.resets = 0  # connections reset by a fault
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._released = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control (from any thread) ----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def set(self, fault: Fault) -> None:
        """Use `fault` for connections accepted from now on (and stop or start listening for `refuse`)."""
        self._call(self._set(fault))

    def release(self) -> None:
        """Let every stalled connection go on (later stalls hold again)."""
        self._call(self._release())

    def stop(self) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    # -- on the proxy's loop ----------------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, fault: Fault) -> None:
        self.fault = fault
        if fault.refuse and self._server is not None:
            self._server.close()  # open connections go on; new ones are refused
            self._server = None
        elif not fault.refuse and self._server is None:
            await self._listen()

    async def _release(self) -> None:
        self._released.set()
        self._released = asyncio.Event()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)
            return
        self._writers |= {client_writer, upstream_writer}
        request = asyncio.ensure_future(self._pump(client_reader, upstream_writer))
        try:
            await self._respond(upstream_reader, client_writer, upstream_writer, request)
        finally:
            request.cancel()
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.fault.latency_s:
                    await asyncio.sleep(self.fault.latency_s)  # the fault itself
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        request: asyncio.Future[None],
    ) -> None:
        """Pass the response on under the current fault; a new fault (set()) starts its byte count afresh, on
        connections already open too (a client's kept-alive connection)."""
        fault: Fault | None = None
        sent = 0
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if fault is not self.fault:
                    fault, sent = self.fault, 0
                    if fault.stall_before_first_byte and not await self._stall(request):
                        return
                if fault.latency_s:
                    await asyncio.sleep(fault.latency_s)
                if fault.reset_after_bytes is not None and sent + len(data) >= fault.reset_after_bytes:
                    writer.write(data[: fault.reset_after_bytes - sent])
                    await writer.drain()
                    self.resets += 1
                    _reset(writer)
                    _reset(upstream)
                    return
                if fault.stall_after_bytes is not None and sent <= fault.stall_after_bytes < sent + len(data):
                    cut = fault.stall_after_bytes - sent
                    writer.write(data[:cut])
                    await writer.drain()
                    sent += cut
                    data = data[cut:]
                    if not await self._stall(request):
                        return
                writer.write(data)
                await writer.drain()
                sent += len(data)

    async def _stall(self, request: asyncio.Future[None]) -> bool:
        """Hold until release(); False if the client went away meanwhile (its side of the pump ended)."""
        released = asyncio.ensure_future(self._released.wait())
        await asyncio.wait({released, request}, return_when=asyncio.FIRST_COMPLETED)
        if not released.done():
            released.cancel()
            return False
        return True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextmanager
def fault_proxy(target_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
