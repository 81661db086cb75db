"""The InferenceGraph resource (apiVersion serving.llmserve.io/v1alpha1), in KServe's v1alpha1 shape.

```yaml
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: rag}
spec:
  exposeAs: {model: rag}          # optional: /v1/chat/completions with model "rag" runs the graph
  nodes:
    root:
      routerType: Sequence        # Sequence | Switch | Ensemble | Splitter
      steps:
        - {name: retrieve, serviceName: retriever}
        - {name: answer, serviceName: smollm2, data: $response, stream: true}
```

What KServe's webhook checks is checked the same way (a `root` node; exactly one of nodeName / serviceName /
serviceUrl per step; unique step names per node; Splitter weights present and summing to 100; the graph name).
Checked here and not by KServe: references to nodes that do not exist, cycles of nodeName references, a Switch
step without a condition (it could never match), a condition or `data: $response` on the first step of a
Sequence (there is no previous response), and the streaming rules below. References to InferenceServices are
checked by `check_service_references` against the services known where the graph is applied.

Streaming (an llmserve addition; KServe's router buffers everything, kserve/kserve#2837): a step declares
`stream: true` when its answer may be a stream (Server-Sent Events, e.g. an LLM asked with `"stream": true`).
Such a step's answer is relayed to the client chunk by chunk, so it must be where the client sees it: the last
step of a Sequence, or a step of a Switch or Splitter, in a node that is itself in such a place (up to `root`).
An Ensemble merges whole JSON objects and cannot stream. A step whose output another step needs (`data:
$response`, a `condition`) is read whole; steps without `stream: true` are always read whole, as in KServe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from llmserve.spec.models import Metadata, _Strict

ROOT = "root"
# KServe's GraphNameFmt: graph names start with a letter (service names may start with a digit).
GRAPH_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
RouterType = Literal["Sequence", "Switch", "Ensemble", "Splitter"]


class InferenceStep(_Strict):
    """One destination of a node: exactly one of nodeName, serviceName, serviceUrl."""

    name: str | None = Field(default=None, min_length=1, description="Step name, unique within its node.")
    node_name: str | None = Field(default=None, alias="nodeName", description="Another node of this graph.")
    service_name: str | None = Field(
        default=None, alias="serviceName", description="An InferenceService (its metadata.name)."
    )
    service_url: str | None = Field(default=None, alias="serviceUrl", description="A URL called as is (POST).")
    data: Literal["$request", "$response"] = Field(
        default="$request",
        description="Sequence only: what this step is sent: the graph's input, or the previous step's response.",
    )
    map_predictions_to_instances: bool = Field(
        default=False,
        alias="mapPredictionsToInstances",
        description="Rename 'predictions' to 'instances' in what this step is sent (KServe V1 chaining).",
    )
    weight: int | None = Field(default=None, ge=0, le=100, description="Splitter only: share of the traffic (%).")
    condition: str | None = Field(
        default=None,
        min_length=1,
        description="A GJSON path. Sequence: run this step only if it exists in the previous response. Switch: "
        "the first step whose condition exists in the input is taken.",
    )
    dependency: Literal["Soft", "Hard"] = Field(
        default="Soft", description="Hard: a non-2xx answer stops the node with that answer (Sequence, Ensemble)."
    )
    stream: bool = Field(
        default=False,
        description="This step's answer may be a stream (SSE): relay it chunk by chunk (llmserve extension).",
    )
    path: str | None = Field(
        default=None,
        description="serviceName steps: the path to call on the service (default: from its protocol and the "
        "body: /v1/chat/completions, /v1/completions, /v1/embeddings; /v2/models/M/infer or "
        "/v1/models/M:predict). llmserve extension.",
    )

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "://" in value or any(c in value for c in " ?#")):
            raise ValueError("must be an absolute path such as /v1/embeddings (no scheme, host, query or spaces)")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> InferenceStep:
        targets = [t for t in (self.node_name, self.service_name, self.service_url) if t]
        if not targets:
            raise ValueError("a step needs an inference target: one of nodeName, serviceName, serviceUrl")
        if len(targets) > 1:
            raise ValueError("a step takes only one of nodeName, serviceName, serviceUrl")
        if self.path is not None and self.service_name is None:
            raise ValueError("path is for serviceName steps (a serviceUrl is called as written)")
        return self

    @property
    def target(self) -> str:
        """nodeName, serviceName or serviceUrl: whichever is set."""
        return self.node_name or self.service_name or self.service_url or ""


class InferenceRouter(_Strict):
    """A node of the graph: how it routes to its steps."""

    router_type: RouterType = Field(alias="routerType", description="Sequence, Switch, Ensemble or Splitter.")
    steps: list[InferenceStep] = Field(min_length=1, description="Where this node sends the request.")


class RouterTimeouts(_Strict):
    """Per-step and streaming limits, in seconds (KServe's name for the step limit is kept)."""

    service_client: float | None = Field(
        default=None,
        gt=0,
        alias="serviceClient",
        description="Limit for one step: until its whole answer for a step read whole, until its headers for a "
        "streamed step. Default: none (KServe's default).",
    )
    stream_idle: float = Field(
        default=120.0,
        gt=0,
        alias="streamIdle",
        description="Longest silence between two chunks of a streamed step (instead of a total write timeout "
        "that would cut long streams).",
    )


class ExposeAs(_Strict):
    model: str = Field(min_length=1, description="OpenAI model name: /v1/chat/completions with it runs the graph.")


class InferenceGraphSpec(_Strict):
    nodes: dict[str, InferenceRouter] = Field(description="The graph's nodes by name; 'root' receives the input.")
    timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds the graph may take until its answer starts (whole answers: until complete; a "
        "stream is then bounded by routerTimeouts.streamIdle per chunk).",
    )
    router_timeouts: RouterTimeouts = Field(
        default_factory=RouterTimeouts, alias="routerTimeouts", description="Per-step and streaming limits."
    )
    expose_as: ExposeAs | None = Field(
        default=None, alias="exposeAs", description="Also serve the graph as an OpenAI model (llmserve extension)."
    )

    @model_validator(mode="after")
    def _graph_rules(self) -> InferenceGraphSpec:
        problems = list(_graph_problems(self.nodes))
        if problems:  # one "field: message" per line, fields relative to spec (the loader expands them)
            raise ValueError("\n".join(problems))
        return self


class GraphMetadata(Metadata):
    @field_validator("name")
    @classmethod
    def _graph_name(cls, value: str) -> str:
        if not re.match(GRAPH_NAME, value):
            raise ValueError(
                "an InferenceGraph name must consist of lower case alphanumeric characters or '-' and start "
                "with a letter (e.g. 'my-name' or 'abc-123')"
            )
        return value


class InferenceGraph(_Strict):
    api_version: Literal["serving.llmserve.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["InferenceGraph"]
    metadata: GraphMetadata
    spec: InferenceGraphSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def service_names(self) -> list[str]:
        """The InferenceServices the graph calls (serviceName steps), in order of first use."""
        seen: dict[str, None] = {}
        for node in self.spec.nodes.values():
            for step in node.steps:
                if step.service_name is not None:
                    seen.setdefault(step.service_name)
        return list(seen)


def check_service_references(graph: InferenceGraph, known: set[str] | frozenset[str], where: str) -> list[str]:
    """Problems with the graph's serviceName steps given the InferenceServices that exist (`known`), one line
    each as `field: message` (empty: all good). `where` says what `known` is ("in this file", "on the
    controller") for the message."""
    problems = []
    for name, node in graph.spec.nodes.items():
        for index, step in enumerate(node.steps):
            if step.service_name is not None and step.service_name not in known:
                declared = ", ".join(sorted(known)) or "none"
                problems.append(
                    f"spec.nodes.{name}.steps.{index}.serviceName: no InferenceService named "
                    f"'{step.service_name}' {where} (declared: {declared})"
                )
    return problems


# -- rules KServe's webhook checks, and the ones it does not ------------------------------------------------------
def _graph_problems(nodes: dict[str, InferenceRouter]) -> Iterator[str]:
    if ROOT not in nodes:
        yield "nodes: root node not found: an InferenceGraph needs a node named 'root' (it receives the input)"
    for name, node in nodes.items():
        yield from _node_problems(name, node, nodes)
    yield from _cycles(nodes)
    if ROOT in nodes:
        yield from _stream_problems(nodes)


def _node_problems(name: str, node: InferenceRouter, nodes: dict[str, InferenceRouter]) -> Iterator[str]:
    at = f"nodes.{name}"
    seen: set[str] = set()
    for index, step in enumerate(node.steps):
        where = f"{at}.steps.{index}"
        if step.name is not None:
            if step.name in seen:
                yield f"{where}.name: node '{name}' has more than one step named '{step.name}'"
            seen.add(step.name)
        if step.node_name is not None and step.node_name not in nodes:
            yield f"{where}.nodeName: no node named '{step.node_name}' (nodes: {', '.join(sorted(nodes))})"
        if node.router_type != "Splitter" and step.weight is not None:
            yield f"{where}.weight: only Splitter steps take a weight ({name} is a {node.router_type})"
        if node.router_type != "Sequence":
            if step.data != "$request":
                yield f"{where}.data: only Sequence steps can take '$response' ({name} is a {node.router_type})"
            if step.map_predictions_to_instances:
                yield f"{where}.mapPredictionsToInstances: only Sequence steps map predictions"
        if node.router_type == "Switch" and step.condition is None:
            yield f"{where}.condition: required in a Switch node (a step without one never matches)"
        if node.router_type in ("Ensemble", "Splitter") and step.condition is not None:
            yield f"{where}.condition: not used by a {node.router_type} node; remove it"
        if node.router_type == "Sequence" and index == 0:
            if step.condition is not None:
                yield (
                    f"{where}.condition: the first step of a Sequence has no previous response to test "
                    "(KServe's router answers 500 'invalid response'); use a Switch node to route on the input"
                )
            if step.data == "$response":
                yield f"{where}.data: the first step of a Sequence has no previous response; use $request"
    if node.router_type == "Splitter":
        missing = [i for i, step in enumerate(node.steps) if step.weight is None]
        if missing:
            yield f"{at}.steps.{missing[0]}.weight: every step of a Splitter needs a weight"
        elif (total := sum(step.weight or 0 for step in node.steps)) != 100:
            yield f"{at}.steps: the weights of a Splitter's steps must sum to 100 (they sum to {total})"


def _cycles(nodes: dict[str, InferenceRouter]) -> Iterator[str]:
    """One message per cycle of nodeName references, naming the step that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    reported: set[frozenset[str]] = set()

    def visit(name: str) -> Iterator[str]:
        state[name] = 1
        path.append(name)
        for index, step in enumerate(nodes[name].steps):
            child = step.node_name
            if child is None or child not in nodes:
                continue
            if state.get(child) == 1:
                loop = [*path[path.index(child) :], child]
                if frozenset(loop) not in reported:
                    reported.add(frozenset(loop))
                    yield (
                        f"nodes.{name}.steps.{index}.nodeName: '{child}' closes a cycle "
                        f"({' -> '.join(loop)}); a graph must not have cycles"
                    )
            elif child not in state:
                yield from visit(child)
        path.pop()
        state[name] = 2

    for name in nodes:
        if name not in state:
            yield from visit(name)


def _stream_problems(nodes: dict[str, InferenceRouter]) -> Iterator[str]:
    """Where a `stream: true` step sits: only where its answer is the node's answer, all the way up to root."""
    terminal: set[str] = set()  # nodes whose answer is the client's answer (reached from root through such steps)
    pending = [ROOT]
    while pending:
        name = pending.pop()
        if name in terminal or name not in nodes:
            continue
        terminal.add(name)
        node = nodes[name]
        for index, step in enumerate(node.steps):
            if step.node_name is not None and _is_terminal(node, index):
                pending.append(step.node_name)
    for name, node in nodes.items():
        for index, step in enumerate(node.steps):
            if not step.stream:
                continue
            where = f"nodes.{name}.steps.{index}.stream"
            if node.router_type == "Ensemble":
                yield f"{where}: an Ensemble merges its steps' whole JSON answers and cannot stream"
            elif not _is_terminal(node, index):
                later = node.steps[index + 1]
                if later.condition is not None:
                    reason = f"step {index + 1} has a condition, which is tested on this step's whole answer"
                elif later.data == "$response":
                    reason = f"step {index + 1} takes $response, this step's whole answer"
                else:
                    reason = "only the last step's answer reaches the client"
                yield f"{where}: a streaming step must be the last of its Sequence ({reason})"
            elif name not in terminal:
                yield (
                    f"{where}: node '{name}' is not where the graph's answer comes from (it is reached from an "
                    "Ensemble, from a step other than the last of a Sequence, or not from root), so it cannot stream"
                )


def _is_terminal(node: InferenceRouter, index: int) -> bool:
    if node.router_type == "Sequence":
        return index == len(node.steps) - 1
    return node.router_type in ("Switch", "Splitter")
