"""Payload-log sinks for tests: an HTTP sink that records every CloudEvent, and one that never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from gateway.asgi import Receive, Scope, Send, read_body


class RecordingSink:
    """An HTTP sink that stores every event (headers and body)."""

    def __init__(self, on_event: Callable[[dict[str, str], bytes], None] | None = None) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.on_event = on_event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(scope, receive, 1 << 20)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.events.append((headers, body))
        if self.on_event is not None:
            self.on_event(headers, body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class HangingSink:
    """Accepts connections and reads what is sent, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/events"
        self.received = b""
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += data

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()
