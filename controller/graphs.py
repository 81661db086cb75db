"""The controller's InferenceGraphs: checked against the running services, published to gateways, saved.

A graph is accepted only when every serviceName step names a service that is running on this controller (or is
applied with it) and its `exposeAs` model name is not served by a service or another graph. Graphs run nowhere
on the control plane: gateways learn them through the watch and run them; nothing here has replicas.

Deleting a service that a graph calls is refused (`ServiceInUse`, naming the graph and its step): a graph whose
step has nowhere to go would fail every request, and KServe users expect the dependency to be explicit. Delete
or change the graph first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from llmserve.spec import InferenceGraph, InferenceService, SpecError, check_graphs

log = logging.getLogger("llmserve.controller")


class GraphWriter(Protocol):
    """Where graphs are published for gateways (controller/state.py's ControlState)."""

    def declare_graph(self, graph: InferenceGraph) -> None: ...

    def withdraw_graph(self, name: str) -> None: ...


class ServiceInUse(Exception):
    """A service cannot be deleted: InferenceGraphs call it."""


class GraphCatalog:
    def __init__(self, writer: GraphWriter | None = None) -> None:
        self._writer = writer
        self._graphs: dict[str, InferenceGraph] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._graphs

    def get(self, name: str) -> InferenceGraph | None:
        return self._graphs.get(name)

    def all(self) -> list[InferenceGraph]:
        return list(self._graphs.values())

    # -- checks ----------------------------------------------------------------------------------------------------
    def check(
        self,
        graphs: Sequence[InferenceGraph],
        services: Sequence[InferenceService],
        running: Mapping[str, InferenceService],
        source: str,
    ) -> None:
        """SpecError unless `graphs` and `services` (applied together) fit with what runs: the graphs' steps name
        services that exist once applied, no exposed model name clashes with a served one, and no incoming service
        takes the model name a remaining graph is exposed as."""
        incoming = {s.name for s in services}
        replaced = {g.name for g in graphs}
        remaining = {name: s for name, s in running.items() if name not in incoming}
        models = {s.served_model_name for s in remaining.values()}
        models |= {g.spec.expose_as.model for g in self._graphs.values() if g.name not in replaced and g.spec.expose_as}
        check_graphs(
            source, graphs, services, known_services=remaining.keys(), known_models=models, where="on the controller"
        )
        exposed = {
            g.spec.expose_as.model: g.name
            for g in self._graphs.values()
            if g.name not in replaced and g.spec.expose_as is not None
        }
        for service in services:
            graph = exposed.get(service.served_model_name)
            if graph is not None:
                raise SpecError(
                    f"{service.name}: spec.predictor.model.servedModelName: '{service.served_model_name}' is the "
                    f"model name InferenceGraph '{graph}' is exposed as (spec.exposeAs.model)."
                )

    def check_delete_service(self, name: str) -> None:
        """ServiceInUse when a graph still calls service `name`."""
        users = list(self.users_of(name))
        if users:
            graphs = sorted({graph for graph, _ in users})
            where = ", ".join(f"InferenceGraph '{graph}' ({field})" for graph, field in users)
            raise ServiceInUse(
                f"The service '{name}' is called by {where}: delete the graph first "
                f"(llmserve delete graph/{graphs[0]}) or apply it without that step."
            )

    def users_of(self, service: str) -> Iterable[tuple[str, str]]:
        """(graph, field) for every step that calls `service`."""
        for graph in self._graphs.values():
            for node_name, node in graph.spec.nodes.items():
                for index, step in enumerate(node.steps):
                    if step.service_name == service:
                        yield graph.name, f"spec.nodes.{node_name}.steps.{index}.serviceName"

    # -- changes ---------------------------------------------------------------------------------------------------
    def apply(self, graphs: Sequence[InferenceGraph]) -> list[str]:
        """Create or change `graphs` (checked already); what happened to each."""
        outcome = []
        for graph in graphs:
            previous = self._graphs.get(graph.name)
            if previous == graph:
                outcome.append(f"graph/{graph.name}: unchanged")
                continue
            self._graphs[graph.name] = graph
            if self._writer is not None:
                self._writer.declare_graph(graph)
            outcome.append(f"graph/{graph.name}: {'changed' if previous is not None else 'created'}")
        return outcome

    def delete(self, name: str) -> bool:
        if self._graphs.pop(name, None) is None:
            return False
        if self._writer is not None:
            self._writer.withdraw_graph(name)
        return True

    # -- state directory -------------------------------------------------------------------------------------------
    def saved(self) -> list[dict[str, Any]]:
        return [graph.model_dump(mode="json", by_alias=True) for graph in self._graphs.values()]

    def restore(self, saved: Iterable[dict[str, Any]], running: Mapping[str, InferenceService]) -> None:
        """Graphs saved by a previous controller, each checked again against the restored services; one that no
        longer fits is logged and dropped (it cannot serve)."""
        for data in saved:
            try:
                graph = InferenceGraph.model_validate(data)
                self.check([graph], [], running, "state dir")
            except (ValidationError, SpecError) as exc:
                log.error("state dir: a saved InferenceGraph cannot be used (%s); dropped", exc)
                continue
            self.apply([graph])
        if self._graphs:
            log.info("state dir: restored %d InferenceGraph(s)", len(self._graphs))

    # -- status ----------------------------------------------------------------------------------------------------
    def status(self, ready: Callable[[str], int], min_replicas: Callable[[str], int]) -> list[dict[str, Any]]:
        """Each graph with the services it calls: ready replicas, and whether a request would be served now (a
        service at zero replicas that scales from zero is woken by the first request)."""
        out = []
        for graph in self._graphs.values():
            services = [(name, ready(name), min_replicas(name)) for name in graph.service_names()]
            out.append(
                {
                    "name": graph.name,
                    "kind": "InferenceGraph",
                    "exposed_as": graph.spec.expose_as.model if graph.spec.expose_as else None,
                    "nodes": {name: node.router_type for name, node in graph.spec.nodes.items()},
                    "services": [{"name": n, "ready_replicas": r, "min_replicas": m} for n, r, m in services],
                    "ready": all(r > 0 or m == 0 for _, r, m in services),
                    "spec": graph.model_dump(mode="json", by_alias=True),
                }
            )
        return out
