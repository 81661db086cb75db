"""Controller settings, passed down by the caller."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from llmserve.workers.tracing import WorkerTracing


class ControllerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    replica_host: str = Field(default="127.0.0.1", description="Address replicas listen on (loopback by default).")
    log_dir: Path = Field(default=Path(".llmserve/logs"), description="One log file per replica process.")
    python: str | None = Field(default=None, description="Interpreter for worker processes; default: this one.")
    startup_poll_s: float = Field(default=0.25, gt=0, description="How often a starting replica's health is polled.")
    health_interval_s: float = Field(default=5.0, gt=0, description="Health-check period of a ready replica.")
    health_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one health check.")
    health_failures_to_restart: int = Field(
        default=3, ge=1, description="Consecutive failed health checks after which a replica is restarted."
    )
    stop_grace_s: float = Field(default=15.0, ge=0, description="SIGTERM, then SIGKILL after this many seconds.")
    backoff_initial_s: float = Field(default=1.0, ge=0, description="First delay before restarting a replica.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest delay between restarts (doubling).")
    backoff_reset_after_s: float = Field(
        default=60.0, ge=0, description="A replica ready this long restarts with the initial delay again."
    )
    drain_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a replica being stopped (scaled down, of a retired revision or a deleted service, or "
        "when the controller stops) may finish its requests after it is withdrawn; then SIGTERM (llmserve --drain-"
        "timeout).",
    )
    warm_pool_size: int = Field(
        default=0,
        ge=0,
        description="Local backend: pre-started processes that have imported vLLM, so a vLLM replica serves a few "
        "seconds after it is asked for (about 750 MiB each while idle). 0: every replica starts the plain way.",
    )
    pull_retry_s: float = Field(default=30.0, gt=0, description="Delay before retrying a failed model pull.")
    gateway_url: str | None = Field(
        default=None,
        description="Where replicas reach a gateway (http://host:port), passed to them as LLMSERVE_GATEWAY_URL "
        "(the retriever embeds through it). `llmserve up` sets its own gateway's address; None: not passed.",
    )
    gateway_api_key: SecretStr | None = Field(
        default=None,
        description="A key of that gateway, passed to replicas as LLMSERVE_GATEWAY_API_KEY when it takes keys. "
        "Never logged.",
    )
    worker_tracing: WorkerTracing | None = Field(
        default=None,
        description="Where vLLM replicas export their own spans (--otlp-traces-endpoint); None: untraced workers.",
    )
    revision_retire_after_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a revision that lost its traffic keeps its replicas (gateways with the previous split, "
        "requests in flight, a quick rollback) before they are drained and stopped.",
    )
    revision_failure_restarts: int = Field(
        default=2,
        ge=1,
        description="A new revision whose replica failed to start this many times (or whose model pull failed), "
        "while another revision serves, has failed: it gets no traffic and its replicas are stopped.",
    )
    revision_history: int = Field(
        default=10, ge=0, description="Retired revisions remembered per service (status, rollbacks by name)."
    )
