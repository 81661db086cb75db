"""aiohttp's client as the gateway's upstream pool: the library variant of gateway/upstream.py, for the overhead
benchmark only (issue 14: if the home-made client is not clearly cheaper per request, the gateway should switch).

Same surface as `gateway.upstream.UpstreamPool` / `UpstreamResponse` as the gateway uses them: `request()` returns
once the headers arrived; `watch_idle()` bounds a worker's silence; the body is read whole or chunk by chunk;
`abort()` closes the connection unless the response is complete; connect failures are retryable `UpstreamError`s.
`serve_gateway.py --upstream aiohttp` swaps it in.
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.upstream import Headers, UpstreamError


class AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Headers = [(k.lower(), v) for k, v in response.raw_headers]
        self.received_any = True
        self._idle_s: float | None = None

    def watch_idle(self, seconds: float) -> None:
        """A worker silent for `seconds` while a chunk is awaited breaks the response (as gateway/upstream.py)."""
        self._idle_s = seconds if seconds > 0 else None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        return self._response.content.at_eof()

    async def next_chunk(self) -> bytes | None:
        try:
            data = await asyncio.wait_for(self._response.content.readany(), self._idle_s)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"worker broke the response: {exc}") from None
        if not data:
            self._response.release()
            return None
        return data

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def abort(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()  # drops the connection: the worker sees the client go


class AiohttpUpstreamPool:
    def __init__(
        self, *, connect_timeout: float = 5.0, idle_timeout: float = 4.0, max_idle_per_worker: int = 128
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle_per_worker
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=self.idle_timeout)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            )
        return self._session

    async def request(
        self,
        url: str,
        method: bytes,
        path: bytes,
        headers: Headers,
        body: bytes,
        *,
        header_timeout: float | None = None,
    ) -> AiohttpResponse:
        session = self._client()
        sent = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        try:
            response = await asyncio.wait_for(
                session.request(method.decode(), url + path.decode(), data=body, headers=sent), header_timeout
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"cannot connect to {url}: {exc}", retryable=True) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{url}: {exc or type(exc).__name__}") from None
        return AiohttpResponse(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def idle_connections(self) -> int:
        return 0
