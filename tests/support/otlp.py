"""An OTLP/HTTP collector stand-in: accepts POST /v1/traces (protobuf), keeps the spans it was sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportedSpan:
    service: str  # the exporter's service.name
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root
    attributes: dict[str, Any]


@dataclass
class OtlpCollector:
    spans: list[ExportedSpan] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        if scope["path"] == "/v1/traces":
            self.spans.extend(decode(body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})


def decode(body: bytes) -> list[ExportedSpan]:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = []
    for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
        names = {a.key: a.value.string_value for a in resource.resource.attributes}
        for scope_spans in resource.scope_spans:
            for span in scope_spans.spans:
                attributes = {
                    a["key"]: next(iter(a["value"].values())) for a in MessageToDict(span).get("attributes", [])
                }
                out.append(ExportedSpan(names.get("service.name", ""), span.name, span.trace_id.hex(),
                                        span.span_id.hex(), span.parent_span_id.hex(), attributes))  # fmt: skip
    return out
