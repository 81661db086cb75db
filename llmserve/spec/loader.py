"""Read InferenceService YAML files; a bad file fails with its path, the field and what is allowed there."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmserve.spec.models import InferenceService


class SpecError(ValueError):
    """An InferenceService file that cannot be used; the message names the file and the field."""


def load_services(path: str | Path) -> list[InferenceService]:
    """All InferenceServices declared in one YAML file (several documents separated by '---' allowed)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    return parse_services(text, str(source))


def parse_services(text: str, source: str = "<string>") -> list[InferenceService]:
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    if not documents:
        raise SpecError(f"{source}: no InferenceService found (the file is empty).")
    services: list[InferenceService] = []
    for index, document in enumerate(documents):
        where = source if len(documents) == 1 else f"{source} (document {index + 1})"
        if not isinstance(document, dict):
            raise SpecError(f"{where}: expected a mapping with apiVersion, kind, metadata and spec.")
        try:
            services.append(InferenceService.model_validate(document))
        except ValidationError as exc:
            raise SpecError(_describe(where, exc)) from None
    _check_unique(source, services)
    return services


def _check_unique(source: str, services: Iterable[InferenceService]) -> None:
    names: set[str] = set()
    models: set[str] = set()
    for service in services:
        if service.name in names:
            raise SpecError(f"{source}: metadata.name: '{service.name}' is declared twice; names must be unique.")
        if service.served_model_name in models:
            raise SpecError(
                f"{source}: spec.predictor.model.servedModelName: '{service.served_model_name}' is served twice."
            )
        names.add(service.name)
        models.add(service.served_model_name)


def _describe(where: str, exc: ValidationError) -> str:
    lines = [f"{where}: invalid InferenceService:"]
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc[:-1])
            message = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif err["type"] == "missing":
            message = "required field is missing"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        lines.append(f"  {field}: {message}" if field else f"  {message}")
    return "\n".join(lines)


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names (as written in YAML) of the model found by walking `loc` from InferenceService."""
    model: type[BaseModel] | None = InferenceService
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = next(
            (f for name, f in model.model_fields.items() if part in (name, f.alias)),
            None,
        )
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
