"""The worker-hop HTTP client against raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.upstream import UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        raw = RawServer(handler)
        raw.server = await asyncio.start_server(raw._on_connect, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()
        await raw.server.wait_closed()


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        request = await read_request(reader)
        writer.write(ok(request.split(b"\r\n\r\n", 1)[1]))
        await writer.drain()


async def test_keep_alive_reuses_one_connection(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive_echo)
    pool = UpstreamPool()
    for i in range(5):
        response = await pool.request(server.url, b"POST", b"/x", [], b"body-%d" % i)
        assert response.status == 200
        assert await response.read() == b"body-%d" % i
    assert server.connections == 1
    assert pool.idle_connections() == 1
    await pool.close()


async def test_request_line_and_headers(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(ok(b"{}"))
        await writer.drain()

    server = await serve(handler)
    pool = UpstreamPool()
    response = await pool.request(server.url, b"POST", b"/v1/chat", [(b"x-request-id", b"r1")], b'{"a":1}')
    await response.read()
    head, body = seen[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat HTTP/1.1"
    assert b"content-length: 7" in lines
    assert b"x-request-id: r1" in lines
    assert body == b'{"a":1}'
    await pool.close()


async def test_stale_keep_alive_connection_is_retried_on_a_fresh_one(
    serve: Callable[[Handler], Awaitable[RawServer]],
) -> None:
    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"fine"))  # says nothing about closing, then closes: the pool keeps a dead connection
        await writer.drain()

    server = await serve(one_answer_then_close)
    pool = UpstreamPool()
    assert await (await pool.request(server.url, b"POST", b"/", [], b"")).read() == b"fine"
    await server.closed.wait()
    await asyncio.sleep(0)  # let the client side see the close... or not: either way the next request succeeds
    assert await (await pool.request(server.url, b"POST", b"/", [], b"")).read() == b"fine"
    assert server.connections == 2
    await pool.close()


async def test_connection_refused_is_retryable() -> None:
    pool = UpstreamPool(connect_timeout=2)
    with pytest.raises(UpstreamError, match="cannot connect") as info:
        await pool.request("http://127.0.0.1:9", b"POST", b"/", [], b"")
    assert info.value.retryable


async def test_chunked_body_arrives_piece_by_piece(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    release = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()

    server = await serve(stream)
    pool = UpstreamPool()
    response = await pool.request(server.url, b"POST", b"/", [], b"")
    assert response.header(b"content-type") == b"text/event-stream"
    assert await response.next_chunk() == b"data: 1"  # before the server sent the rest
    release.set()
    assert await response.next_chunk() == b"data: 2"
    assert await response.next_chunk() is None
    assert response.complete
    await pool.close()


async def test_abort_closes_the_connection(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    server = await serve(endless)
    pool = UpstreamPool()
    response = await pool.request(server.url, b"POST", b"/", [], b"")
    assert await response.next_chunk()
    response.abort()
    await asyncio.wait_for(server.closed.wait(), 5)  # the server saw the connection go away
    assert pool.idle_connections() == 0
    await pool.close()


async def test_cut_response_and_garbage_are_errors(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a few bytes")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    pool = UpstreamPool()
    response = await pool.request((await serve(cut)).url, b"POST", b"/", [], b"")
    with pytest.raises(UpstreamError, match="closed the connection"):
        await response.read()
    with pytest.raises(UpstreamError, match="malformed response"):
        await pool.request((await serve(garbage)).url, b"POST", b"/", [], b"")
    await pool.close()


async def test_header_timeout(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # says nothing; returns when the client gives up and closes

    server = await serve(silent)
    pool = UpstreamPool()
    with pytest.raises(UpstreamError, match=r"no response from the worker within 0\.2 s"):
        await pool.request(server.url, b"POST", b"/", [], b"", header_timeout=0.2)
    await asyncio.wait_for(server.closed.wait(), 5)
    await pool.close()


async def test_cancelled_request_closes_its_connection(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes

    server = await serve(slow)
    pool = UpstreamPool()
    task = asyncio.create_task(pool.request(server.url, b"POST", b"/", [], b""))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.closed.wait(), 5)
    await pool.close()


async def test_worker_connections_probe_a_silent_peer(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    import socket

    server = await serve(keep_alive_echo)
    pool = UpstreamPool()
    await (await pool.request(server.url, b"POST", b"/", [], b"x")).read()
    (conn,) = next(iter(pool._idle.values()))
    sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
    await pool.close()


async def test_a_worker_silent_mid_body_breaks_the_response_but_a_slow_reader_does_not(serve: object) -> None:
    """watch_idle: the worker's silence counts, time the consumer takes (bytes waiting for it) does not."""
    go_on = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata: \r\n")
        await writer.drain()
        await go_on.wait()  # then silent, until the test lets it go on
        writer.write(b"2\r\n1\n\r\n")
        await writer.drain()
        await reader.read()  # silent again, until the gateway closes the connection

    raw = await serve(handler)  # type: ignore[operator]
    pool = UpstreamPool()
    response = await pool.request(raw.url, b"POST", b"/", [], b"{}")
    response.watch_idle(0.2)
    await asyncio.sleep(0.5)  # the consumer is slow: a chunk waits for it, so nothing is idle
    assert await response.next_chunk() == b"data: "
    go_on.set()
    assert await response.next_chunk() == b"1\n"
    with pytest.raises(UpstreamError) as silent:
        await response.next_chunk()
    assert silent.value.stalled
    assert "no data from the worker for 0.2 s" in str(silent.value)
    await asyncio.wait_for(raw.closed.wait(), 5)  # the connection is closed: the worker learns of it
    await pool.close()
