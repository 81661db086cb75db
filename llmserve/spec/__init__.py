"""The InferenceService and InferenceGraph resources: pydantic models in KServe's shape, and a loader with
file-and-field errors."""

from llmserve.spec.graph import (
    ExposeAs,
    InferenceGraph,
    InferenceGraphSpec,
    InferenceRouter,
    InferenceStep,
    RouterTimeouts,
    check_service_references,
)
from llmserve.spec.loader import (
    Declared,
    SpecError,
    check_graphs,
    load_resources,
    load_services,
    parse_resources,
    parse_services,
)
from llmserve.spec.models import (
    AutoscalingSpec,
    EnvVar,
    InferenceService,
    InferenceServiceSpec,
    LoggerSpec,
    ModelFormat,
    ModelSpec,
    PredictorSpec,
    Resources,
    RoutingSpec,
    TransformerSpec,
)

__all__ = [
    "AutoscalingSpec",
    "Declared",
    "EnvVar",
    "ExposeAs",
    "InferenceGraph",
    "InferenceGraphSpec",
    "InferenceRouter",
    "InferenceService",
    "InferenceServiceSpec",
    "InferenceStep",
    "LoggerSpec",
    "ModelFormat",
    "ModelSpec",
    "PredictorSpec",
    "Resources",
    "RouterTimeouts",
    "RoutingSpec",
    "SpecError",
    "TransformerSpec",
    "check_graphs",
    "check_service_references",
    "load_resources",
    "load_services",
    "parse_resources",
    "parse_services",
]
