"""An OTLP/HTTP trace sink for the tracing benchmark: POST /v1/traces is decoded (so the spans are real) and
counted; GET /count answers how many spans arrived.

    python benchmarks/tracing_overhead/collector.py --port 4318
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Sink:
    def __init__(self) -> None:
        self.spans = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        answer = b""
        if scope["path"] == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        elif scope["path"] == "/count":
            answer = str(self.spans).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    uvicorn.run(Sink(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
