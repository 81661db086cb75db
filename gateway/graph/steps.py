"""What the graph interpreter asks of whoever calls the services: the step caller's interface.

The interpreter never opens a connection itself. It hands each service step to a `StepCaller`:

    answer = await call(target, body, headers, stream)

- `target`: the step's serviceName (with its optional `path`) or serviceUrl;
- `body`: the bytes to POST; `headers`: what the graph propagates (always a content-type);
- `stream`: whether a streamed answer may be returned as chunks (only the step whose answer is the client's,
  declared `stream: true`). Without it the caller may still return chunks: the interpreter reads them whole.

It returns a `StepAnswer` whose body is bytes or a stream of chunks (`Chunks`: async-iterable, and `aclose()`
aborts the upstream exchange even when no chunk was read yet: a plain async generator does not run its cleanup
then, so callers use a small class), or raises `ServingError` when the step cannot be called (the status is
kept: 500 for a transport failure, as KServe; a caller that routes through an activator may say 503). A non-2xx
answer is an answer, not an error: the graph's dependency rules decide what it means.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

Headers = list[tuple[bytes, bytes]]
JSON_TYPE = b"application/json"


class Chunks(Protocol):
    """A streamed body: iterate for the chunks; `aclose()` ends it (and its upstream) at any point."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StepTarget:
    """Where one step goes: a service by name (the caller resolves it) or a URL called as written."""

    label: str  # for messages: "root.steps[1] (answer)"
    service_name: str | None = None
    service_url: str | None = None
    path: str | None = None  # serviceName only: the path to call; None: the caller derives it
    router_type: str = ""  # the node's kind (Sequence, Switch, Ensemble, Splitter): traces name it


@dataclass(slots=True)
class StepAnswer:
    status: int
    headers: Headers
    body: bytes | Chunks

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    @property
    def streamed(self) -> bool:
        return not isinstance(self.body, bytes)

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)

    async def read(self) -> bytes:
        """The whole body (a stream is read to its end)."""
        if isinstance(self.body, bytes):
            return self.body
        chunks = self.body
        try:
            self.body = b"".join([chunk async for chunk in chunks])
        finally:
            await chunks.aclose()
        return self.body

    async def discard(self) -> None:
        """Drop a body that will not be read (a stream's upstream is aborted)."""
        if not isinstance(self.body, bytes):
            with contextlib.suppress(Exception):
                await self.body.aclose()
            self.body = b""


StepCaller = Callable[[StepTarget, bytes, Headers, bool], Awaitable[StepAnswer]]
