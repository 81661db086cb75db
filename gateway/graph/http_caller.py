"""A step caller that calls URLs directly over HTTP/1.1 (gateway/upstream.py's pool): serviceUrl steps as written,
serviceName steps at the address they are given. Tests and benchmarks use it; inside the gateway, a caller that
goes through the scheduler and the activator takes its place (same interface: steps.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.graph.steps import Headers, StepAnswer, StepTarget
from gateway.graph.targets import service_request
from gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from llmserve.endpoints import ServiceProtocol
from llmserve.protocol.errors import ServingError

_EVENT_STREAM = b"text/event-stream"
_HOP_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """Where a service answers (http://host:port), the model name it serves and its protocol."""

    url: str
    model_name: str
    protocol: ServiceProtocol = "openai"


class HttpStepCaller:
    def __init__(self, services: Mapping[str, ServiceAddress], pool: UpstreamPool | None = None) -> None:
        self.services = services
        self.pool = pool or UpstreamPool()

    async def __call__(self, target: StepTarget, body: bytes, headers: Headers, stream: bool) -> StepAnswer:
        base, path, body = self._where(target, body)
        try:
            response = await self.pool.request(base, b"POST", path.encode(), step_headers(headers), body)
        except UpstreamError as exc:  # KServe: a step that cannot be called is a 500
            raise ServingError(500, f"{target.label}: {exc}", code="step_unreachable") from None
        return await step_answer(response, target.label, stream)

    def _where(self, target: StepTarget, body: bytes) -> tuple[str, str, bytes]:
        if target.service_url is not None:
            parts = urlsplit(target.service_url)
            if parts.scheme != "http":
                raise ServingError(500, f"{target.label}: only http:// service URLs can be called here")
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            return f"http://{parts.netloc}", path, body
        name = target.service_name or ""
        address = self.services.get(name)
        if address is None:
            raise ServingError(404, f"{target.label}: no service named '{name}' is known", code="service_not_found")
        path, body = service_request(target.label, address.protocol, address.model_name, body, target.path)
        return address.url, path, body

    async def close(self) -> None:
        await self.pool.close()


def step_headers(headers: Headers) -> Headers:
    """The graph's headers for a step, without the ones the upstream client writes itself."""
    return [(k, v) for k, v in headers if k.lower() not in _HOP_HEADERS]


async def step_answer(
    response: UpstreamResponse, label: str, stream: bool, on_end: Callable[[], None] | None = None
) -> StepAnswer:
    """A worker's response (headers in) as a step's answer: chunks when `stream` and it is an SSE stream, else the
    whole body. `on_end` runs once the exchange is over (read, failed, or its chunks closed): a gateway caller
    releases its load-ledger entry there. Shared by every step caller that talks HTTP/1.1 through UpstreamPool."""
    content_type = response.header(b"content-type") or b"application/json"
    headers = [(b"content-type", content_type)]
    if stream and response.header(b"content-length") is None and content_type.startswith(_EVENT_STREAM):
        return StepAnswer(response.status, headers, UpstreamChunks(response, label, on_end))
    try:
        data = await response.read()
    except UpstreamError as exc:
        raise ServingError(500, f"{label}: {exc}", code="step_unreachable") from None
    finally:
        response.abort()  # a no-op once complete; cancelled mid-read: the worker sees the close
        if on_end is not None:
            on_end()
    return StepAnswer(response.status, headers, data)


class UpstreamChunks:
    """A streamed worker response as `Chunks`: ends (and aborts the exchange unless it completed) on its last
    chunk, on a failure, or on `aclose()`, whichever comes first; `on_end` runs once."""

    def __init__(self, response: UpstreamResponse, label: str, on_end: Callable[[], None] | None) -> None:
        self._response = response
        self._label = label
        self._on_end = on_end
        self._ended = False

    def __aiter__(self) -> UpstreamChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await self._response.next_chunk()
        except UpstreamError as exc:
            self._end()
            raise ServingError.upstream_failure(f"{self._label}: {exc}") from None
        except BaseException:
            self._end()
            raise
        if chunk is None:
            self._end()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._response.abort()  # a no-op once complete
            if self._on_end is not None:
                self._on_end()
