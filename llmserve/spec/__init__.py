"""The InferenceService resource: pydantic models in KServe's shape, and a loader with file-and-field errors."""

from llmserve.spec.loader import SpecError, load_services, parse_services
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
    "EnvVar",
    "InferenceService",
    "InferenceServiceSpec",
    "LoggerSpec",
    "ModelFormat",
    "ModelSpec",
    "PredictorSpec",
    "Resources",
    "RoutingSpec",
    "SpecError",
    "TransformerSpec",
    "load_services",
    "parse_services",
]
