"""The gateway's HTTP/1.1 client for the hop to workers.

A keep-alive connection pool per worker, responses parsed by httptools, and bodies handed over chunk by chunk as
they arrive (with back-pressure: reading from the worker pauses while the client is slow). Aborting a response
closes its connection, which is how a worker (vLLM) learns that the client went away and stops generating.

Why not httpx or aiohttp: this hop runs once per request on the hot path, and httpx's pool alone costs
milliseconds of CPU per request (../shared/NOTES.md); this client is a thin asyncio.Protocol instead.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]

_HIGH_WATER = 256 * 1024  # pause reading from the worker when this much is buffered for a slow client
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The worker could not be reached or broke the exchange.

    `retryable` is true only when the request certainly did not reach the worker (connect failed), so sending
    it to another replica cannot run it twice. `stalled`: the worker went silent (no headers, or no body bytes,
    within the limit); the connection is closed, so it stops working on the request.
    """

    def __init__(self, message: str, *, retryable: bool = False, stalled: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.stalled = stalled


class UpstreamResponse:
    """A response whose body arrives over time; read it whole or chunk by chunk."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_headers_waiter",
        "_idle_s",
        "_idle_timer",
        "_last_data",
        "_paused",
        "_waiter",
        "headers",
        "received_any",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: Headers = []
        self.received_any = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers_waiter: asyncio.Future[None] | None = conn.loop.create_future()
        self._paused = False
        self._idle_s = 0.0  # watch_idle(): the longest silence allowed from the worker mid-body
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0

    # -- consumer side --------------------------------------------------------------------------------------
    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        return self._done and not self._chunks

    async def next_chunk(self) -> bytes | None:
        """The body bytes received since the last call (at least one byte), or None at the end."""
        while True:
            if self._chunks:
                if len(self._chunks) == 1:
                    data = self._chunks.popleft()
                else:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    self._conn.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            waiter = self._waiter = self._conn.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def abort(self) -> None:
        """Stop the exchange: unless the response is complete, close the connection (the worker sees it)."""
        self._unwatch()
        if not self._done:
            self._done = True
            self._chunks.clear()
            self._conn.close()

    def watch_idle(self, seconds: float) -> None:
        """From now on, a worker that sends no body byte for `seconds` breaks the response (UpstreamError,
        `stalled`; the connection is closed so that it stops). Time when reading is paused for a slow client, or
        when bytes wait for the consumer, is not the worker's silence. One timer per response, re-armed lazily."""
        if self._done or seconds <= 0:
            return
        loop = self._conn.loop
        self._idle_s = seconds
        self._last_data = loop.time()
        self._idle_timer = loop.call_at(self._last_data + seconds, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._done or self._error is not None:
            return
        loop = self._conn.loop
        now = loop.time()
        if self._paused or self._chunks:
            self._last_data = now  # the client is the slow one
        elif now - self._last_data >= self._idle_s:
            error = UpstreamError(f"no data from the worker for {self._idle_s:g} s", stalled=True)
            self._conn._broken(error)
            return
        self._idle_timer = loop.call_at(self._last_data + self._idle_s, self._check_idle)

    def _unwatch(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # -- producer side (called by the connection) -------------------------------------------------------------
    async def _wait_headers(self, limit_s: float | None) -> None:
        waiter = self._headers_waiter
        if waiter is None:
            return
        try:
            if limit_s is None:
                await waiter
            else:
                await asyncio.wait_for(asyncio.shield(waiter), limit_s)
        except TimeoutError:
            self.abort()
            raise UpstreamError(f"no response from the worker within {limit_s:g} s", stalled=True) from None

    def _headers_done(self) -> None:
        self.received_any = True
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._idle_s:
            self._last_data = self._conn.loop.time()
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._unwatch()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._done:
            return
        self._unwatch()
        self._error = error
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.lost = False
        self.idle_since = 0.0
        self.uses = 0
        self._headers: Headers = []

    # -- asyncio.Protocol -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        _keepalive(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(UpstreamError(f"malformed response from the worker: {exc}"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool._forget(self)
        if self.response is not None:
            response, self.response = self.response, None
            reason = f": {exc}" if exc else ""
            response._fail(UpstreamError(f"the worker closed the connection{reason}"))

    # -- httptools callbacks ----------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            response.status = self.parser.get_status_code()
            response.headers = self._headers
            response._headers_done()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        keep_alive = self.parser.should_keep_alive()
        if response is not None:
            response._finish()
        if keep_alive and not self.lost:
            self.pool._release(self)
        else:
            self.close()

    # -- used by the pool and the response --------------------------------------------------------------------
    def send(self, head: bytes, body: bytes) -> UpstreamResponse:
        assert self.transport is not None
        self.uses += 1
        response = self.response = UpstreamResponse(self)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return response

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.lost = True
            self.pool._forget(self)
            self.transport.close()

    def _broken(self, error: UpstreamError) -> None:
        if self.response is not None:
            response, self.response = self.response, None
            response._fail(error)
        self.close()


def _keepalive(sock: object) -> None:
    """TCP keepalive probes on worker connections: a worker whose machine vanished (no FIN, no RST) is noticed
    after ~11 s of silence instead of never; a live but slow worker's kernel still answers the probes."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # type: ignore[attr-defined]
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)  # type: ignore[attr-defined]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)  # type: ignore[attr-defined]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"worker URL must be http://host:port, got {url!r}")
    return parts.hostname, parts.port or 80


class UpstreamPool:
    """Keep-alive connections to the workers, reused last-in-first-out."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 4.0,
        max_idle_per_worker: int = 128,
    ) -> None:
        # idle_timeout stays below uvicorn's (vLLM's) 5 s keep-alive so we rarely reuse a connection it closes.
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle_per_worker
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._keys: dict[str, tuple[str, int]] = {}

    async def request(
        self,
        url: str,
        method: bytes,
        path: bytes,
        headers: Headers,
        body: bytes,
        *,
        header_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request; return once the response's headers arrived (the body streams after)."""
        key = self._keys.get(url)
        if key is None:
            key = self._keys[url] = split_url(url)
        host = f"{key[0]}:{key[1]}".encode()
        head = b"".join(
            [
                method, b" ", path, b" HTTP/1.1\r\nhost: ", host,
                b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
                *[name + b": " + value + b"\r\n" for name, value in headers],
                b"\r\n",
            ]
        )  # fmt: skip
        conn = self._take_idle(key)
        if conn is not None:
            response = conn.send(head, body)
            try:
                await response._wait_headers(header_timeout)
                return response
            except UpstreamError:
                if response.received_any:
                    raise
                # A kept-alive connection the worker had just closed: nothing was processed, use a fresh one.
            except BaseException:
                response.abort()  # cancelled while waiting: the worker must not go on generating for nobody
                raise
        conn = await self._connect(key)
        response = conn.send(head, body)
        try:
            await response._wait_headers(header_timeout)
        except BaseException:
            response.abort()
            raise
        return response

    async def close(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close()
        self._idle.clear()

    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    # -- internals --------------------------------------------------------------------------------------------
    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        deadline = time.monotonic() - self.idle_timeout
        while conns:
            conn = conns.pop()
            if not conn.lost and conn.idle_since >= deadline:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, key, loop), key[0], key[1]),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError(f"connecting to {key[0]}:{key[1]} timed out", retryable=True) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}", retryable=True) from None
        return protocol

    def _release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conns = self._idle.setdefault(conn.key, [])
        conns.append(conn)
        if len(conns) > self.max_idle:
            conns.pop(0).close()

    def _forget(self, conn: _Connection) -> None:
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
