"""Read InferenceService and InferenceGraph YAML files; a bad file fails with its path, the field and what is
allowed there. A file may mix both kinds (documents separated by '---')."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmserve.spec.graph import InferenceGraph, check_service_references
from llmserve.spec.models import InferenceService

KINDS: dict[str, type[InferenceService] | type[InferenceGraph]] = {
    "InferenceService": InferenceService,
    "InferenceGraph": InferenceGraph,
}


class SpecError(ValueError):
    """An InferenceService file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Declared:
    """What one file (one apply) declares."""

    services: list[InferenceService] = field(default_factory=list)
    graphs: list[InferenceGraph] = field(default_factory=list)


def load_services(path: str | Path) -> list[InferenceService]:
    """All InferenceServices declared in one YAML file (several documents separated by '---' allowed). Graphs in
    the file are checked too (a bad one is an error) but not returned: `load_resources` returns both."""
    return load_resources(path).services


def parse_services(text: str, source: str = "<string>") -> list[InferenceService]:
    return parse_resources(text, source).services


def load_resources(path: str | Path, *, known_services: Iterable[str] = (), where: str = "in this file") -> Declared:
    """The InferenceServices and InferenceGraphs of one YAML file; see `parse_resources`."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    return parse_resources(text, str(source), known_services=known_services, where=where)


def parse_resources(
    text: str, source: str = "<string>", *, known_services: Iterable[str] = (), where: str = "in this file"
) -> Declared:
    """Every document of `text`, checked. A graph's serviceName steps must name a service of the same file or
    one of `known_services` (those already running where the file is applied); `where` says which, for the
    message ("in this file", "in this file or on the controller")."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    if not documents:
        raise SpecError(f"{source}: no InferenceService or InferenceGraph found (the file is empty).")
    declared = Declared()
    for index, document in enumerate(documents):
        located = source if len(documents) == 1 else f"{source} (document {index + 1})"
        if not isinstance(document, dict):
            raise SpecError(f"{located}: expected a mapping with apiVersion, kind, metadata and spec.")
        kind = document.get("kind", "InferenceService")
        model = KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise SpecError(
                f"{located}: invalid resource:\n  kind: must be 'InferenceService' or 'InferenceGraph' (got {kind!r})"
            )
        try:
            resource = model.model_validate(document)
        except ValidationError as exc:
            raise SpecError(_describe(located, exc, model)) from None
        if isinstance(resource, InferenceGraph):
            declared.graphs.append(resource)
        else:
            declared.services.append(resource)
    _check_unique(source, declared.services)
    check_graphs(source, declared.graphs, declared.services, known_services=known_services, where=where)
    return declared


def check_graphs(
    source: str,
    graphs: Iterable[InferenceGraph],
    services: Iterable[InferenceService],
    *,
    known_services: Iterable[str] = (),
    known_models: Iterable[str] = (),
    where: str,
) -> None:
    """SpecError unless every graph's serviceName steps name one of `services` or `known_services`, graph names are
    unique, and no graph is exposed under a model name a service (of `services`, or `known_models`) or another
    graph already serves. The controller calls it with its running services' names and model names."""
    services = list(services)
    names = {s.name for s in services} | set(known_services)
    models = {s.served_model_name for s in services} | set(known_models)
    seen: set[str] = set()
    for graph in graphs:
        problems = check_service_references(graph, frozenset(names), where)
        if graph.name in seen:
            problems.append(f"metadata.name: InferenceGraph '{graph.name}' is declared twice; names must be unique")
        seen.add(graph.name)
        exposed = graph.spec.expose_as
        if exposed is not None:
            if exposed.model in models:
                problems.append(f"spec.exposeAs.model: '{exposed.model}' is already served (model names are unique)")
            models.add(exposed.model)
        if problems:
            raise SpecError("\n  ".join([f"{source}: invalid InferenceGraph '{graph.name}':", *problems]))


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


def _describe(where: str, exc: ValidationError, root: type[BaseModel] = InferenceService) -> str:
    lines = [f"{where}: invalid {root.__name__}:"]
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "value_error" and root is InferenceGraph and loc == ("spec",):
            # The graph-wide rules: one "field: message" per line, fields relative to spec.
            lines += [f"  spec.{line}" for line in message.splitlines()]
            continue
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc[:-1], root)
            message = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif err["type"] == "missing":
            message = "required field is missing"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        lines.append(f"  {field}: {message}" if field else f"  {message}")
    return "\n".join(lines)


def _allowed_fields(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """Field names (as written in YAML) of the model found by walking `loc` from `root`."""
    model: type[BaseModel] | None = root
    for index, part in enumerate(loc):
        if model is None or isinstance(part, int):
            continue
        if index > 0 and loc[index - 1] == "nodes":  # a key of spec.nodes (a node's name)
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
