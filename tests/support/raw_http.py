"""HTTP/1.1 over a plain socket, byte by byte if need be: for tests of what a server does with clients that
misbehave (slow heads, huge headers, bodies that stop), which no HTTP client library lets one send."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


class RawConnection:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
        self.opened_at = time.monotonic()
        self.received = b""
        self.eof_at: float | None = None

    def send(self, data: bytes) -> bool:
        """False once the server has closed (or reset) the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def wait_data(self, within_s: float) -> bool:
        """Wait up to `within_s` for bytes or the end; True if the server sent something or closed."""
        if self.eof_at is not None:
            return True
        self.sock.settimeout(within_s)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if chunk:
            self.received += chunk
        else:
            self.eof_at = time.monotonic()
        return True

    def read_to_end(self, within_s: float) -> bytes | None:
        """Everything the server sends until it closes; None if it has not closed within `within_s`."""
        deadline = time.monotonic() + within_s
        while self.eof_at is None:
            left = deadline - time.monotonic()
            if left <= 0 or not self.wait_data(left):
                return None
        return self.received

    def read_response(self, within_s: float = 10) -> RawResponse:
        """One complete response with a Content-Length (the connection may stay open)."""
        deadline = time.monotonic() + within_s
        while True:
            _, sep, body = self.received.partition(b"\r\n\r\n")
            if sep:
                response = parse_response(self.received)
                length = int(response.headers.get("content-length", "0"))
                if len(body) >= length:
                    self.received = body[length:]
                    response.body = body[:length]
                    return response
            left = deadline - time.monotonic()
            if self.eof_at is not None or left <= 0 or not self.wait_data(left):
                raise AssertionError(f"no complete response within {within_s} s: {self.received[:200]!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_head(method: str, path: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test", *(f"{k}: {v}" for k, v in headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
