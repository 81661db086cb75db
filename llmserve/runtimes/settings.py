"""Settings of the predictive runtime: one `ModelSettings` per served model, one `RuntimeSettings` per process.

A model comes from `--model NAME=URI[:format]` on the command line or from a model repository
(`--model-repository DIR`: every sub-directory is a model; an optional `model-settings.json` in it holds any
`ModelSettings` field). Every field has a default and says what it does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmserve.frontdoor import FrontDoorSettings

ModelFormat = Literal["sklearn", "xgboost", "lightgbm"]
MODEL_FORMATS: tuple[str, ...] = ("sklearn", "xgboost", "lightgbm")
SETTINGS_FILE = "model-settings.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tensor name.")
    datatype: str = Field(description="V2 datatype (FP32, INT64, BYTES, ...).")
    shape: list[int] = Field(description="Shape; -1 for a variable dimension.")


class ModelSettings(BaseModel):
    """How one model is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The name clients use in /v2/models/{name}.", pattern=_NAME.pattern)
    uri: str = Field(description="Where the artifact is: a path, file://, s3://, http(s):// (tar/zip are unpacked).")
    format: ModelFormat | None = Field(
        default=None,
        description="sklearn (joblib/pickle), xgboost (json/ubj booster) or lightgbm (text model); "
        "guessed from the artifact's file name when unset.",
    )
    version: str | None = Field(
        default=None, description="Model version; requests naming another version in the path get 404."
    )
    max_batch_size: int = Field(
        default=64, ge=1, description="Rows merged into one predict call across concurrent requests (1: no batching)."
    )
    max_latency_ms: float = Field(
        default=0.0,
        ge=0.0,
        description="How long a batch may wait for more requests. 0: take whatever is queued, never wait.",
    )
    memory_bytes: int | None = Field(
        default=None,
        ge=0,
        description="What the model costs against the memory budget; default: the size of its artifact files.",
    )
    feature_means: list[float] | None = Field(
        default=None,
        description="Training-data feature means for explaining linear models (coef * (x - mean)); default: the "
        "'feature_means' of training-summary.json next to the model.",
    )
    outputs: list[str] | None = Field(
        default=None, description="Outputs returned when a request names none; default: the model's first output."
    )
    inputs_metadata: list[TensorSpec] | None = Field(
        default=None, description="Input tensors reported in model metadata; default: derived from the model."
    )


class RuntimeSettings(BaseModel):
    """The runtime process."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="REST bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="REST port (0: any free port).")
    grpc_port: int | None = Field(default=None, ge=0, le=65535, description="gRPC port; None: no gRPC server.")
    models: list[ModelSettings] = Field(default_factory=list, description="Models served from startup.")
    model_repository: Path | None = Field(
        default=None, description="A directory of model directories; repository load/unload picks up new ones."
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Models kept loaded at once may cost at most this much; least-recently-used ones are unloaded "
        "and loaded again on demand. None: no limit.",
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="Largest request body accepted (413).")
    front_door: FrontDoorSettings = Field(
        default_factory=FrontDoorSettings,
        description="Connection limits of the REST and gRPC ports (header size and count, read deadlines, a cap "
        "on connections).",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="Graceful drain on SIGTERM / Ctrl-C: the ports stop taking connections and calls at once, "
        "requests in flight may finish for this long, then the process exits (what is left is cut).",
    )
    cache_dir: Path | None = Field(
        default=None, description="Where remote artifacts are cached; default: LLMSERVE_CACHE or ~/.cache."
    )
    server_name: str = Field(default="llmserve-runtime", description="Reported in server metadata.")
    log_level: str = Field(default="info", description="Logging level of the process (debug, info, warning).")


def parse_model_arg(value: str) -> ModelSettings:
    """`NAME=URI[:format]`; the `:format` suffix is only taken when it names a known format."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--model expects NAME=URI[:format], got '{value}'")
    model_format: str | None = None
    head, colon, tail = rest.rpartition(":")
    if colon and tail in MODEL_FORMATS:
        rest, model_format = head, tail
    try:
        return ModelSettings.model_validate({"name": name, "uri": rest, "format": model_format})
    except ValidationError as exc:
        raise ValueError(f"--model {value}: {exc.errors()[0]['msg']}") from None


def scan_repository(root: Path) -> list[ModelSettings]:
    """One ModelSettings per sub-directory of `root` (hidden ones skipped), merged with its model-settings.json."""
    if not root.is_dir():
        raise ValueError(f"model repository {root} is not a directory")
    return [read_model_dir(path) for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith(".")]


def read_model_dir(path: Path) -> ModelSettings:
    values: dict[str, object] = {"name": path.name, "uri": str(path)}
    settings_file = path / SETTINGS_FILE
    if settings_file.is_file():
        try:
            values.update(json.loads(settings_file.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{settings_file}: not valid JSON ({exc})") from None
    try:
        return ModelSettings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{settings_file}: {where}: {first['msg']}") from None
