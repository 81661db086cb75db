"""A step caller that calls URLs directly over HTTP/1.1 (gateway/upstream.py's pool): serviceUrl steps as written,
serviceName steps at the address they are given. Tests and benchmarks use it; inside the gateway, a caller that
goes through the scheduler and the activator takes its place (same interface: steps.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
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
        sent = [(k, v) for k, v in headers if k.lower() not in _HOP_HEADERS]
        try:
            response = await self.pool.request(base, b"POST", path.encode(), sent, body)
        except UpstreamError as exc:  # KServe: a step that cannot be called is a 500
            raise ServingError(500, f"{target.label}: {exc}", code="step_unreachable") from None
        content_type = response.header(b"content-type") or b"application/json"
        answer_headers = [(b"content-type", content_type)]
        if stream and response.header(b"content-length") is None and content_type.startswith(_EVENT_STREAM):
            return StepAnswer(response.status, answer_headers, _chunks(response, target.label))
        try:
            data = await response.read()
        except UpstreamError as exc:
            raise ServingError(500, f"{target.label}: {exc}", code="step_unreachable") from None
        finally:
            response.abort()  # a no-op once complete; cancelled mid-read: the worker sees the close
        return StepAnswer(response.status, answer_headers, data)

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


async def _chunks(response: UpstreamResponse, label: str) -> AsyncGenerator[bytes, None]:
    try:
        while (chunk := await response.next_chunk()) is not None:
            yield chunk
    except UpstreamError as exc:
        raise ServingError.upstream_failure(f"{label}: {exc}") from None
    finally:
        response.abort()
