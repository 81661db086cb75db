"""Tracing of the workers themselves: vLLM's own `llm_request` spans, exported where the gateway's go.

With the gateway's spans on, a vLLM replica gets `--otlp-traces-endpoint` and the OTLP transport in
OpenTelemetry's standard variables; the gateway's W3C `traceparent` on each request makes vLLM's span a child of
the gateway's upstream call, so one trace shows both. Built in main() from the same settings as the gateway's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FLAG = "--otlp-traces-endpoint"


class WorkerTracing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(description="OTLP collector the workers export spans to (vLLM's --otlp-traces-endpoint).")
    protocol: Literal["grpc", "http/protobuf"] = Field(default="grpc", description="OTLP transport.")
    insecure: bool = Field(default=True, description="gRPC without TLS.")

    def flags(self) -> list[str]:
        return [FLAG, self.endpoint]

    def env(self, service: str) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": self.protocol,
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true" if self.insecure else "false",
            "OTEL_SERVICE_NAME": f"vllm-{service}",
        }
