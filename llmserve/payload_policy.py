"""What a gateway needs to know to log a service's payloads: its `spec.logger`, as the controller publishes it
with the service (llmserve.endpoints.ServiceInfo) and gateway/payload_log.py applies it. Neither plane imports
the other; on the wire it is a nested object of the service (llmserve/protocol/control.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the data plane reads policies without loading the spec models (pydantic)
    from llmserve.spec import InferenceService

Mode = Literal["all", "request", "response"]


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """A service's `spec.logger`, as the gateway applies it."""

    mode: Mode = "all"
    url: str | None = None  # HTTP sink (binary-mode CloudEvents)
    file: str | None = None  # JSONL sink (an absolute path once the controller resolved it)
    sample_rate: float = 1.0
    metadata_headers: frozenset[str] = frozenset()  # lowercase names of request headers copied into events
    annotations: Mapping[str, str] | None = None  # the selected metadataAnnotations of the service
    namespace: str = "default"  # the service's metadata.namespace (the events' source)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(s for s in (self.url, f"file:{self.file}" if self.file else None) if s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "url": self.url,
            "file": self.file,
            "sample_rate": self.sample_rate,
            "metadata_headers": sorted(self.metadata_headers),
            "annotations": dict(self.annotations or {}),
            "namespace": self.namespace,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogPolicy:
        annotations = data.get("annotations") or {}
        return cls(
            mode=_mode(data.get("mode", "all")),
            url=_text(data.get("url")),
            file=_text(data.get("file")),
            sample_rate=float(data.get("sample_rate", 1.0)),
            metadata_headers=frozenset(str(h).lower() for h in data.get("metadata_headers") or ()),
            annotations={str(k): str(v) for k, v in annotations.items()} or None,
            namespace=str(data.get("namespace") or "default"),
        )


def _mode(value: object) -> Mode:
    if value == "request":
        return "request"
    if value == "response":
        return "response"
    if value == "all":
        return "all"
    raise ValueError(f"unknown payload-log mode {value!r}")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def log_policy(service: InferenceService, base_dir: Path | None = None) -> LogPolicy | None:
    """A service's `spec.logger` as its policy (None: not logged); a relative `file` is resolved against
    `base_dir` (default: the current directory, where llmserve runs), wherever the gateway runs."""
    spec = service.spec.logger
    if spec is None:
        return None
    annotations = service.metadata.annotations
    selected = {key: annotations[key] for key in spec.metadata_annotations if key in annotations}
    return LogPolicy(
        mode=spec.mode,
        url=spec.url,
        file=str(((base_dir or Path.cwd()) / spec.file).resolve()) if spec.file else None,
        sample_rate=spec.sample_rate,
        metadata_headers=frozenset(spec.metadata_headers),
        annotations=selected or None,
        namespace=service.metadata.namespace,
    )
