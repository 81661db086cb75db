"""Connection limits at the front door of every HTTP port: header size and count, read deadlines, a connection cap.

uvicorn reads request heads without bound (a 64 MiB header is buffered whole: vLLM's CVE-2025-48956), has no
deadline for reading a head or a body (its keep-alive timeout runs only between requests), and no cap on open
connections. `FrontDoorProtocol` is uvicorn's httptools protocol with those limits; `uvicorn_config` is the one
way a server of this project builds its uvicorn config (gateway, V2 runtime, control API), so every port gets them.

What a client sees (the body is in the OpenAI envelope, or V2's `{"error": ...}` for a `/v2` path):
- request line + headers over `max_header_bytes`, or more than `max_header_count` headers: 431 and close, as
  soon as the limit is passed (the rest of the head is never buffered);
- head not complete `header_timeout_s` after accept (or after the first byte of a later request on a kept-alive
  connection): 408 and close (slowloris);
- a declared body with no byte for `body_idle_timeout_s` while the server waits for it, or one arriving slower than
  `body_min_rate_bytes_s` (after a first `body_idle_timeout_s` of grace: a client trickling a byte a second is
  cut too): 408 and close; time the server itself is not reading (the app is slow, or it has not yet asked for a
  `100-continue` body) does not count;
- beyond `max_connections` open connections: 503 with `Retry-After: 1` at once, before anything is read.
A response once started is never cut by these deadlines: an SSE stream runs as long as it runs. (A head pipelined
in the same read as the end of the previous request is counted from the next read on: at most one read buffer more.)

Every refusal is written, then the write side is shut (the client reads the answer, then EOF) and what the client
still sends is read and dropped for up to a second before the socket closes, so a client that is still sending
gets the status instead of a connection reset.

gRPC ports (HTTP/2, grpcio) have their own limits; `grpc_server_options` sets them explicitly from the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import time
from typing import Any, Literal

import httptools
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from llmserve.protocol.errors import ServingError

log = logging.getLogger("llmserve.frontdoor")

_LINGER_S = 1.0  # how long a refused connection's input is drained before the socket closes
_FD_HEADROOM = 256  # descriptors beyond max_connections: worker connections, log files, the listening sockets
_warned_at = 0.0


class FrontDoorSettings(BaseModel):
    """Limits every HTTP (and gRPC) port of the project applies to its clients."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request head (request line + all headers) in bytes; beyond it 431 and close.",
    )
    max_header_count: int = Field(default=100, ge=1, description="Most request headers; beyond it 431 and close.")
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds from accept (or from the first byte of a later request on the connection) to a "
        "complete request head; then 408 and close.",
    )
    body_idle_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a declared request body may go without a byte while the server waits for it; then 408 "
        "and close.",
    )
    body_min_rate_bytes_s: int = Field(
        default=500,
        ge=0,
        description="Slowest request body accepted, in bytes per second, after body_idle_timeout_s of grace (the "
        "deadline moves 1 s later for each this many bytes received); then 408 and close. 0: no rate rule.",
    )
    max_connections: int = Field(
        default=2048,
        ge=1,
        description="Open client connections per process; beyond it 503 + Retry-After at once. Keep it well below "
        "the process's file-descriptor limit (ulimit -n).",
    )


def add_front_door_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings as command-line flags (every server's CLI takes the same ones)."""
    defaults = FrontDoorSettings()
    group = parser.add_argument_group("connection limits")
    group.add_argument("--max-header-bytes", type=int, default=defaults.max_header_bytes, help="431 beyond")
    group.add_argument("--max-header-count", type=int, default=defaults.max_header_count, help="431 beyond")
    group.add_argument("--header-timeout", type=float, default=defaults.header_timeout_s, help="s; then 408")
    group.add_argument("--body-idle-timeout", type=float, default=defaults.body_idle_timeout_s, help="s; then 408")
    group.add_argument("--body-min-rate", type=int, default=defaults.body_min_rate_bytes_s, help="bytes/s; 408")
    group.add_argument("--max-connections", type=int, default=defaults.max_connections, help="503 beyond")


def front_door_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> FrontDoorSettings:
    """The settings from the flags of `add_front_door_arguments`; a bad value is a usage error."""
    try:
        return FrontDoorSettings(
            max_header_bytes=args.max_header_bytes,
            max_header_count=args.max_header_count,
            header_timeout_s=args.header_timeout,
            body_idle_timeout_s=args.body_idle_timeout,
            body_min_rate_bytes_s=args.body_min_rate,
            max_connections=args.max_connections,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")


ErrorEnvelope = Literal["by-path", "v2"]


class FrontDoorConfig(uvicorn.Config):
    """uvicorn's config, carrying the front-door limits to the protocol instances uvicorn creates."""

    def __init__(
        self, app: Any, *, front_door: FrontDoorSettings, error_envelope: ErrorEnvelope, **options: Any
    ) -> None:
        super().__init__(app, **options)
        self.front_door = front_door
        self.error_envelope = error_envelope


def uvicorn_config(
    app: Any,
    *,
    front_door: FrontDoorSettings,
    error_envelope: ErrorEnvelope = "by-path",
    **options: Any,
) -> FrontDoorConfig:
    """The uvicorn config every HTTP server of the project runs with: httptools behind the front-door limits, no
    WebSocket upgrades (no port of ours serves WebSockets). `error_envelope`: how refusals are rendered, "by-path"
    (V2's envelope under /v2, OpenAI's elsewhere: the gateway) or "v2" (a server that speaks only V2: the runtime).
    `options` are uvicorn.Config's other arguments (host and port, or none when serving given sockets)."""
    for fixed in ("http", "ws", "limit_concurrency"):
        if fixed in options:
            raise TypeError(f"uvicorn_config sets {fixed!r} itself")
    ensure_descriptors(front_door.max_connections + _FD_HEADROOM)
    return FrontDoorConfig(
        app,
        front_door=front_door,
        error_envelope=error_envelope,
        http=FrontDoorProtocol,
        ws="none",
        **options,
    )


def ensure_descriptors(needed: int) -> int:
    """Raise this process's soft limit on open files towards `needed` (up to the hard limit, which needs no
    privilege), so that the connection cap, not EMFILE, is what refuses connections. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if soft < needed:
            log.warning("open-file limit %d is below max_connections + %d: lower max_connections", soft, _FD_HEADROOM)
    return soft


def grpc_server_options(front_door: FrontDoorSettings, *, max_message_bytes: int) -> list[tuple[str, int]]:
    """grpc.aio.server options with the front-door limits made explicit.

    grpcio's defaults: metadata (HTTP/2 headers) soft limit 8 KiB (`grpc.max_metadata_size`; between soft and
    hard limit requests are rejected at random), hard limit 16 KiB (`grpc.absolute_max_metadata_size`), 4 MiB
    messages, and no cap on connections. The handshake deadline (`grpc.server_handshake_timeout_ms`, 120 s by
    default) is the closest thing to a header-read deadline: we set it to `header_timeout_s`. HTTP/2 streams are
    framed and flow-controlled by grpcio's core, so a slow client holds one stream, not a thread.
    """
    metadata = min(front_door.max_header_bytes, 64 * 1024)
    return [
        ("grpc.max_metadata_size", metadata),
        ("grpc.absolute_max_metadata_size", metadata),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.server_handshake_timeout_ms", int(front_door.header_timeout_s * 1000)),
        ("grpc.max_concurrent_streams", 1000),
    ]


class _LimitExceeded(Exception):
    """Raised inside a parser callback to stop parsing; the error to answer is in `_limit_error`."""


class FrontDoorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the front-door limits (see the module docstring).

    Costs nothing per request on the common path: one timer per connection (the first head's deadline), a counter
    per chunk read while a head is incomplete; the body and later-head timers are armed only when a read leaves a
    body or a head incomplete.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "front_door", None)
        self.limits: FrontDoorSettings = limits if isinstance(limits, FrontDoorSettings) else FrontDoorSettings()
        self._v2_only = getattr(config, "error_envelope", "by-path") == "v2"
        self._reading_body = False  # between the end of a head and the end of its message
        self._in_head = False  # a head has begun and is not complete
        self._head_bytes = 0  # bytes read towards the current head
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_body_at = 0.0
        self._body_started_at = 0.0
        self._body_bytes = 0
        self._limit_error: ServingError | None = None
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    # -- connection -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            _warn_rarely("refusing connections: %d open (max_connections)", len(self.connections))
            self._refuse(
                ServingError(
                    503,
                    f"The server has too many open connections (limit {self.limits.max_connections}); retry later.",
                    code="too_many_connections",
                    headers={"retry-after": "1"},
                )
            )
            return
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining a refused connection
        self._unset_keepalive_if_required()
        if self._reading_body:
            if self._body_timer is not None:
                self._last_body_at = self.loop.time()
                self._body_bytes += len(data)
            self._feed(data)
        else:
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                self._feed(data)
            else:
                self._head_bytes = self.limits.max_header_bytes
                if room > 0:
                    self._feed(data[:room])
                if self._refused:
                    return
                if not self._reading_body:  # the head goes on past the limit
                    self._refuse(
                        ServingError(
                            431,
                            f"The request line and headers are larger than the limit of "
                            f"{self.limits.max_header_bytes} bytes.",
                            code="request_header_fields_too_large",
                        )
                    )
                    return
                self._feed(data[room:])
        if self._refused:
            return
        if self._in_head and self._head_timer is None:  # a later request's head is incomplete
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        elif self._reading_body and self._body_timer is None:
            self._last_body_at = self._body_started_at = self.loop.time()
            self._body_bytes = 0
            self._body_timer = self.loop.call_at(
                self._last_body_at + self.limits.body_idle_timeout_s, self._body_timeout
            )

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            error, self._limit_error = self._limit_error, None
            if error is not None:
                self._refuse(error)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:
        self._refuse(ServingError(400, msg))

    # -- parser callbacks -------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            self._limit_error = ServingError(
                431,
                f"The request has more than {self.limits.max_header_count} headers.",
                code="request_header_fields_too_large",
            )
            raise _LimitExceeded
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._reading_body = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # -- deadlines --------------------------------------------------------------------------------------------
    def _responding(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.response_started and not cycle.response_complete

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._refused or self._reading_body:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits behind a response still being produced: never cut that response.
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
            return
        self._refuse(
            ServingError(
                408,
                f"The request headers did not arrive within {self.limits.header_timeout_s:g} s.",
                code="request_timeout",
            )
        )

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._refused or not self._reading_body:
            return
        limits = self.limits
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # The server is not reading: the client is not the one being slow. It starts afresh from here.
            self._last_body_at = now
            rate = limits.body_min_rate_bytes_s
            self._body_started_at = now - (self._body_bytes / rate if rate else 0.0)
        else:
            idle = now - self._last_body_at >= limits.body_idle_timeout_s
            slow = now >= self._rate_deadline()
            if idle or slow:
                if self._responding():
                    return  # a response is on its way: it is never cut (and the body stops being watched)
                message = (
                    f"No request body bytes arrived for {limits.body_idle_timeout_s:g} s."
                    if idle
                    else f"The request body arrived slower than {limits.body_min_rate_bytes_s} bytes/s."
                )
                answered = cycle is not None and cycle.response_complete
                self._refuse(None if answered else ServingError(408, message, code="request_timeout"))
                return
        due = min(self._last_body_at + limits.body_idle_timeout_s, self._rate_deadline())
        self._body_timer = self.loop.call_at(due, self._body_timeout)

    def _rate_deadline(self) -> float:
        """When the body is too slow: a grace of body_idle_timeout_s, plus 1 s per body_min_rate_bytes_s received."""
        rate = self.limits.body_min_rate_bytes_s
        if not rate:
            return float("inf")
        return self._body_started_at + self.limits.body_idle_timeout_s + self._body_bytes / rate

    # -- refusing ---------------------------------------------------------------------------------------------
    def _refuse(self, error: ServingError | None) -> None:
        """Answer `error` (if any) with Connection: close, shut the write side, drain input briefly, close."""
        self._refused = True
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now says http.disconnect and its sends are dropped
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if error is not None:
            transport.write(self._response(error))
        if self.flow is not None:
            self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = self.loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()

    def _response(self, error: ServingError) -> bytes:
        url: bytes = getattr(self, "url", b"") or b""
        body = error.render("/v2" if self._v2_only or url.startswith(b"/v2") else "/")
        lines = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            lines += [name, b": ", value, b"\r\n"]
        for key, text in error.headers.items():
            lines += [key.encode(), b": ", text.encode(), b"\r\n"]
        lines += [
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
        return b"".join(lines)


def _warn_rarely(message: str, *args: object) -> None:
    """At most one warning a second: a flood of refused connections must not become a flood of log lines."""
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 1.0:
        _warned_at = now
        log.warning(message, *args)
