"""Payload logging: each logged exchange becomes two CloudEvents (KServe's logger's format), delivered to the
service's sinks off the request path.

Events (CloudEvents 1.0, as KServe's `pkg/logger` sends them):
- `type` `org.kubeflow.serving.inference.request` / `.response`; `id` the request id (the same for a request and
  its response: that is the correlation); `source` `<source_prefix>/<namespace>/<service>/<component>`; `time`;
  `datacontenttype` the body's content type; `data` the body exactly as it went over the wire;
- extensions `inferenceservicename`, `namespace`, `component`, `endpoint` (the revision), `model`, `metadata`
  (JSON of the `metadataHeaders` of the request), `annotations` (JSON), and on responses `statuscode`, plus
  `truncated` / `incomplete` ("true") when the body was cut at `max_payload_bytes` or the exchange ended early.
- HTTP sink: one POST per event in binary mode (`ce-*` headers, the body as is). File sink: one structured
  event per line (JSON; `data` inline when it is JSON, else text, else `data_base64`).

Never logged: credential headers (`authorization`, `cookie`, ...) whatever `metadataHeaders` says, and any of
the gateway's API keys wherever it appears (bodies included: replaced by `[REDACTED]`).

The request path only appends: `begin()` decides sampling and queues the request event (on the gateway's path,
`start()` defers it to the response's start, when the revision that answered is known); the send wrapper of
`Exchange` (`LoggedSend` in the proxies) hands each response chunk over as it passes to the client (no copy, no
await of anything of the logger's) and queues the response once, assembled from the chunks, when the last one is
sent (or at `close()`).
Each sink has its own bounded queue and workers: a slow or dead sink fills its queue, and what does not fit is
dropped and counted (`llmserve_payload_log_events_total{outcome="dropped"}`); the client never waits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from gateway.asgi import Message, Send
from gateway.upstream import UpstreamPool
from llmserve.endpoints import ServiceInfo
from llmserve.payload_policy import LogPolicy

__all__ = ["REQUEST_TYPE", "RESPONSE_TYPE", "ExchangeInfo", "LogPolicy", "LoggedSend", "PayloadLogCollector",
           "PayloadLogger"]  # fmt: skip

log = logging.getLogger("llmserve.gateway.payload_log")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
REDACTED = b"[REDACTED]"
SECRET_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key", b"api-key"}
)
# CloudEvents' HTTP binding: header values percent-encode space, '"', '%' and everything outside printable ASCII.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
Outcome = Literal["sent", "failed", "dropped"]


@dataclass(frozen=True)
class ExchangeInfo:
    """What the request path knows of one exchange."""

    request_id: str
    service: str
    model: str
    namespace: str = "default"
    revision: str | None = None
    component: str = "predictor"


@dataclass
class _Event:
    kind: str  # REQUEST_TYPE or RESPONSE_TYPE
    info: ExchangeInfo
    policy: LogPolicy
    metadata: dict[str, list[str]]
    content_type: str
    body: list[bytes]
    at: float
    status: int | None = None
    truncated: bool = False
    incomplete: bool = False


class Exchange:
    """One logged exchange's response side: wrap the ASGI `send` that goes to the client with `wrap(send)`.

    With a deferred request event (`begin(..., defer_request=True)`), the request is queued when the response
    starts (or at `close()`), so that it carries the revision `routed()` named meanwhile."""

    __slots__ = ("_chunks", "_content_type", "_done", "_logger", "_metadata", "_request", "_responses", "_size",
                 "_status", "_truncated")  # fmt: skip

    def __init__(
        self,
        logger: PayloadLogger,
        metadata: tuple[ExchangeInfo, LogPolicy, dict[str, list[str]]],
        request: _Event | None = None,
    ):
        self._logger = logger
        self._metadata = metadata
        self._request = request
        self._responses = metadata[1].mode != "request"
        self._chunks: list[bytes] = []
        self._size = 0
        self._status: int | None = None
        self._content_type = "application/json"
        self._truncated = False
        self._done = False

    def routed(self, revision: str) -> None:
        """The revision the request went to (the events' `endpoint`)."""
        info, policy, metadata = self._metadata
        if revision and info.revision != revision:
            self._metadata = (replace(info, revision=revision), policy, metadata)

    def wrap(self, send: Send) -> Send:
        """A send that passes every message on first, then notes what the client got (an append)."""

        async def logged_send(message: Message) -> None:
            await send(message)
            self.observe(message)

        return logged_send

    def observe(self, message: Message) -> None:
        """Note one ASGI message sent to the client (no I/O, no await)."""
        if self._done:
            return
        if self._request is not None:
            self._queue_request()
            if not self._responses:
                self._done = True
                return
        kind = message["type"]
        if kind == "http.response.start":
            self._status = int(message["status"])
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self._content_type = value.decode("latin-1")
        elif kind == "http.response.body":
            chunk: bytes = message.get("body", b"")
            if chunk and not self._truncated:
                self._size += len(chunk)
                if self._size > self._logger.max_payload_bytes:
                    self._truncated = True
                else:
                    self._chunks.append(chunk)
            if not message.get("more_body", False):
                self._finish(incomplete=False)

    def close(self) -> None:
        """The exchange is over (idempotent): if the response did not end normally (client gone, failure), log
        what was sent, marked incomplete."""
        if self._request is not None:
            self._queue_request()
        if not self._done:
            self._done = True
            if self._responses:
                self._finish(incomplete=True)

    def _queue_request(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            request.info = self._metadata[0]
            self._logger._enqueue(request)

    def _finish(self, *, incomplete: bool) -> None:
        self._done = True
        info, policy, metadata = self._metadata
        event = _Event(
            RESPONSE_TYPE,
            info,
            policy,
            metadata,
            self._content_type,
            self._chunks,
            time.time(),
            status=self._status if self._status is not None else 499,
            truncated=self._truncated,
            incomplete=incomplete,
        )
        self._logger._enqueue(event)


class LoggedSend:
    """The client's ASGI `send` for a request whose service may log it: messages pass on at once; once
    `exchange` is set (the service is known and logs payloads), each message is also noted by it, after the
    client got it. Without an exchange it costs one call."""

    __slots__ = ("_send", "exchange")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.exchange: Exchange | None = None

    async def __call__(self, message: Message) -> None:
        await self._send(message)
        if self.exchange is not None:
            self.exchange.observe(message)

    def close(self) -> None:
        if self.exchange is not None:
            self.exchange.close()


class PayloadLogger:
    """One per gateway process: sampling, the sinks' queues and workers, and the counts of what happened."""

    def __init__(
        self,
        *,
        secrets: Iterable[str] = (),
        rng: random.Random | None = None,
        queue_size: int = 1000,
        workers_per_sink: int = 2,
        sink_timeout_s: float = 5.0,
        max_payload_bytes: int = 4 * 1024 * 1024,
        source_prefix: str = "/llmserve",
    ) -> None:
        self.secrets = tuple(s.encode() for s in secrets if s)
        self.rng = rng or random.Random()
        self.queue_size = queue_size
        self.workers_per_sink = workers_per_sink
        self.sink_timeout_s = sink_timeout_s
        self.max_payload_bytes = max_payload_bytes
        self.source_prefix = source_prefix.rstrip("/")
        self._sinks: dict[str, _Sink] = {}
        self._client: httpx.AsyncClient | None = None  # https:// sinks
        self._pool: UpstreamPool | None = None  # http:// sinks: the gateway's own client, a fraction of httpx's CPU
        self.counts: dict[tuple[str, Outcome], int] = {}

    # -- request path ---------------------------------------------------------------------------------------------
    def begin(
        self,
        policy: LogPolicy,
        info: ExchangeInfo,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        content_type: str = "application/json",
        *,
        defer_request: bool = False,
    ) -> Exchange | None:
        """Start logging one exchange (sampled): queues the request event now (with `defer_request`: when the
        response starts); returns the Exchange that logs the response, or None when nothing more is to be logged."""
        if policy.sample_rate < 1.0 and self.rng.random() >= policy.sample_rate:
            return None
        metadata: dict[str, list[str]] = {}
        if policy.metadata_headers:
            for name, value in headers:
                text = name.decode("latin-1")
                if text in policy.metadata_headers and name not in SECRET_HEADERS:
                    metadata.setdefault(text, []).append(value.decode("latin-1"))
        request = None
        if policy.mode in ("all", "request"):
            request = _Event(REQUEST_TYPE, info, policy, metadata, content_type, [body], time.time())
            if defer_request:
                return Exchange(self, (info, policy, metadata), request)
            self._enqueue(request)
        if policy.mode == "request":
            return None
        return Exchange(self, (info, policy, metadata))

    def start(
        self, service: ServiceInfo, request_id: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> Exchange | None:
        """`begin` for a request of `service` on the request path: None unless the service logs payloads (and
        this exchange is sampled); the request event waits for the revision (`Exchange.routed`)."""
        policy = service.logger
        if policy is None:
            return None
        content_type = "application/json"
        for name, value in headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
        info = ExchangeInfo(request_id.decode("latin-1"), service.name, service.model_name, policy.namespace)
        return self.begin(policy, info, headers, body, content_type, defer_request=True)

    def _enqueue(self, event: _Event) -> None:
        for target in event.policy.sinks:
            sink = self._sinks.get(target)
            if sink is None:
                sink = self._sinks[target] = _Sink(self, target)
            sink.put(event)

    # -- lifecycle and metrics --------------------------------------------------------------------------------------
    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued for up to `timeout_s`, then drop (and count) the rest."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(sink.drained() for sink in self._sinks.values()))
        for sink in self._sinks.values():
            await sink.stop()
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:
            await self._pool.close()

    def count(self, sink: str, outcome: Outcome, n: int = 1) -> None:
        key = (sink, outcome)
        self.counts[key] = self.counts.get(key, 0) + n

    def collect(self) -> Iterator[Metric]:
        """Prometheus families (register with `PayloadLogCollector(logger)` on the gateway's registry)."""
        family = CounterMetricFamily(
            "llmserve_payload_log_events", "Payload-log events by sink and outcome.", labels=["sink", "outcome"]
        )
        for (sink, outcome), value in sorted(self.counts.items()):
            family.add_metric([_sink_label(sink), outcome], float(value))
        yield family

    # -- delivery (off the request path) ----------------------------------------------------------------------------
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            self._pool = UpstreamPool()
        return self._pool

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.sink_timeout_s)
        return self._client

    def redact(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, REDACTED)
        return data

    def attributes(self, event: _Event) -> dict[str, str]:
        info = event.info
        attributes = {
            "specversion": "1.0",
            "id": info.request_id,
            "type": event.kind,
            "source": f"{self.source_prefix}/{info.namespace}/{info.service}/{info.component}",
            "time": datetime.fromtimestamp(event.at, UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": event.content_type,
            "inferenceservicename": info.service,
            "namespace": info.namespace,
            "component": info.component,
            "endpoint": info.revision or "default",
            "model": info.model,
            "metadata": orjson.dumps(event.metadata).decode(),
        }
        if event.policy.annotations:
            attributes["annotations"] = orjson.dumps(dict(event.policy.annotations)).decode()
        if event.status is not None:
            attributes["statuscode"] = str(event.status)
        if event.truncated:
            attributes["truncated"] = "true"
        if event.incomplete:
            attributes["incomplete"] = "true"
        return {key: self.redact(value.encode()).decode() for key, value in attributes.items()}


class PayloadLogCollector:
    """Adapter for prometheus_client's registry."""

    def __init__(self, logger: PayloadLogger) -> None:
        self.logger = logger

    def collect(self) -> Iterator[Metric]:
        return self.logger.collect()


class _Sink:
    """One destination (an HTTP URL or `file:PATH`): a bounded queue and its workers."""

    def __init__(self, logger: PayloadLogger, target: str) -> None:
        self.logger = logger
        self.target = target
        self.queue: asyncio.Queue[_Event] = asyncio.Queue(logger.queue_size)
        is_file = target.startswith("file:")
        self.path = Path(target.removeprefix("file:")) if is_file else None
        count = 1 if is_file else logger.workers_per_sink  # one writer keeps a file's lines in order
        self.workers = [asyncio.get_running_loop().create_task(self._work()) for _ in range(count)]

    def put(self, event: _Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.logger.count(self.target, "dropped")

    async def drained(self) -> None:
        await self.queue.join()

    async def stop(self) -> None:
        for worker in self.workers:
            worker.cancel()
        for worker in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        left = self.queue.qsize()
        if left:
            self.logger.count(self.target, "dropped", left)

    async def _work(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                if self.path is not None:
                    await asyncio.to_thread(_append_line, self.path, self._structured(event))
                else:
                    await self._post(event)
                self.logger.count(self.target, "sent")
            except asyncio.CancelledError:
                self.logger.count(self.target, "dropped")
                raise
            except Exception as exc:
                self.logger.count(self.target, "failed")
                log.warning("payload log to %s failed: %s", _sink_label(self.target), exc)
            finally:
                self.queue.task_done()

    async def _post(self, event: _Event) -> None:
        headers = {
            ("content-type" if key == "datacontenttype" else f"ce-{key}"): quote(value, safe=_HEADER_SAFE)
            for key, value in self.logger.attributes(event).items()
        }
        body = self.logger.redact(b"".join(event.body))
        if self.target.startswith("http://") and "@" not in urlsplit(self.target).netloc:  # credentials: httpx
            status = await self._post_plain(body, headers)
        else:
            status = (await self.logger.client().post(self.target, content=body, headers=headers)).status_code
        if status >= 300:
            raise RuntimeError(f"the sink answered {status}")

    async def _post_plain(self, body: bytes, headers: dict[str, str]) -> int:
        """POST to an http:// sink on the gateway's upstream client (keep-alive; the answer's body is read whole)."""
        parts = urlsplit(self.target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        timeout = self.logger.sink_timeout_s
        async with asyncio.timeout(timeout):
            base = f"http://{parts.hostname}:{parts.port or 80}"
            response = await self.logger.pool().request(
                base, b"POST", path.encode("latin-1"), encoded, body, header_timeout=timeout
            )
            try:
                await response.read()
            finally:
                response.abort()  # a no-op once complete
        return response.status

    def _structured(self, event: _Event) -> bytes:
        record: dict[str, Any] = dict(self.logger.attributes(event))
        data = self.logger.redact(b"".join(event.body))
        if "json" in event.content_type:
            with contextlib.suppress(orjson.JSONDecodeError):
                record["data"] = orjson.loads(data)
        if "data" not in record:
            try:
                record["data"] = data.decode("utf-8")
            except UnicodeDecodeError:
                record["data_base64"] = base64.b64encode(data).decode()
        return orjson.dumps(record) + b"\n"


def _append_line(path: Path, line: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(line)


def _sink_label(target: str) -> str:
    """A sink as a metric label or in a log line: URLs without credentials or query."""
    if target.startswith("file:"):
        return target
    parts = urlsplit(target)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
