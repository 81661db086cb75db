"""Gateway settings: a pydantic model built by the caller (CLI, tests) and passed down; nothing read at import."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway.tracing import TracingSettings
from llmserve.frontdoor import FrontDoorSettings


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port the gateway listens on (0: any free port).")
    grpc_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the gateway's gRPC server (Open Inference Protocol's inference.GRPCInferenceService, "
        "forwarded to V2 runtime replicas); 0: no gRPC server (grpc is then never imported).",
    )
    api_keys: tuple[SecretStr, ...] = Field(
        default=(),
        description="Accepted bearer keys; empty means no authentication. Never logged.",
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest request body accepted (413).")
    retry_after_seconds: int = Field(default=5, ge=1, description="Retry-After sent with 503 'no ready replica'.")
    upstream_connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to connect to a worker.")
    upstream_header_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds to wait for a worker's response headers (non-streamed requests send them only "
        "when generation ends); None waits as long as the client does.",
    )
    upstream_first_byte_timeout_s: float | None = Field(
        default=10.0,
        gt=0,
        description="Per-try timeout of a streamed request: a worker that sends no response headers within this "
        "many seconds (vLLM sends a stream's headers at once) is given up on, the connection closed so it stops, and "
        "the request goes to another ready replica, once (nothing reached the client yet). Non-streamed requests are "
        "not cut by it: their headers come only when generation ends. None: off.",
    )
    upstream_stream_idle_timeout_s: float | None = Field(
        default=120.0,
        gt=0,
        description="After a worker's first byte: a response (a stream) from which nothing arrives for this long is "
        "ended, with an error frame in a stream (never a replay of what was sent). None: off.",
    )
    outlier_consecutive_failures: int = Field(
        default=5,
        ge=0,
        description="Outlier ejection: a replica whose last this-many requests failed (5xx, stalled, a broken "
        "stream) is out of rotation on this gateway for ejection_base_s x the times it was ejected, never more than "
        "half of a service's replicas at once; the controller is told. 0: off.",
    )
    upstream_idle_timeout: float = Field(
        default=4.0, gt=0, description="Idle keep-alive connections to workers older than this are not reused."
    )
    access_log: bool = Field(default=False, description="Log every request (uvicorn's access log).")
    routing_profiles_dir: str | None = Field(
        default=None, description="Directory of RoutingProfile YAML files, added to (or replacing) the built-in ones."
    )
    default_routing_profile: str = Field(default="token-aware", description="Profile for services that name none.")
    session_header: str = Field(default="x-session-id", description="Header naming a session for session affinity.")
    scrape_interval_s: float = Field(default=0.5, gt=0, description="How often workers' /metrics are read.")
    activator_queue_depth: int = Field(
        default=100,
        ge=0,
        description="Requests that may wait per service (the activator's one queue: no ready replica, or every one "
        "at its load cap); beyond it 429 while the service has busy replicas, 503 while it has none.",
    )
    activator_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a request that came while its service had no ready replica waits for one (then 503).",
    )
    admission_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request that came while every ready replica was at its load cap waits for a free "
        "slot (then 429).",
    )
    max_requests_per_replica: int | None = Field(
        default=256,
        ge=1,
        description="Load cap: requests this gateway has in flight on one replica at most (a service's "
        "spec.predictor.routing.maxRequestsPerReplica wins); beyond it requests wait in the activator's queue. "
        "None: no cap.",
    )
    max_tokens_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Load cap in tokens (prompt + expected output) in flight on one replica (a service's "
        "maxTokensPerReplica wins); None: no token cap.",
    )
    activator_keepalive_s: float = Field(
        default=5.0, gt=0, description="SSE comment interval for streaming requests held by the activator."
    )

    reuse_port: bool = Field(
        default=False,
        description="Bind the HTTP and gRPC ports with SO_REUSEPORT: several gateway processes share them "
        "(`llmserve gateway --workers N`). Off, a port in use is an error.",
    )
    ejection_base_s: float = Field(
        default=5.0,
        gt=0,
        description="How long a replica that could not be reached (or whose engine died) is left out of rotation on "
        "this gateway; doubled each time it happens again, at most 60 s. A restarted replica (a new address) is used "
        "at once.",
    )

    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="Graceful drain on SIGTERM / Ctrl-C: how long requests and streams in flight may go on (new "
        "connections are refused, /ready fails at once); then each gets 503 or a final error frame and the process "
        "exits. 0: cut at once.",
    )
    front_door: FrontDoorSettings = Field(
        default_factory=FrontDoorSettings,
        description="Connection limits of the HTTP port (header size and count, head and body read deadlines, the "
        "connection cap) and of the gRPC port (metadata size, handshake deadline); llmserve/frontdoor.py.",
    )

    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing of requests (off unless it names an OTLP endpoint); built in main() from "
        "--otlp-endpoint or the standard OTEL_* variables (TracingSettings.from_environment).",
    )

    @property
    def session_header_bytes(self) -> bytes:
        return self.session_header.lower().encode()


class ControlLinkSettings(BaseModel):
    """How a gateway reaches its controller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(default="http://127.0.0.1:8090", description="The controller's control API.")
    token: SecretStr | None = Field(default=None, description="The control API's bearer token. Never logged.")
    report_interval_s: float = Field(default=1.0, gt=0, description="How often demand is reported.")
