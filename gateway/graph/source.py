"""Where a gateway learns its InferenceGraphs: the controller's watch (gateway/watch.py's WatchedEndpoints), or a
fixed set (tests, benchmarks, a gateway without a controller)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from llmserve.spec.graph import InferenceGraph

GraphListener = Callable[[str], None]


class GraphSource(Protocol):
    def graphs(self) -> Mapping[str, InferenceGraph]:
        """The graphs by name, as they are now."""
        ...

    def subscribe_graphs(self, listener: GraphListener) -> None:
        """Call `listener(name)` after every change to graph `name` (added, changed, removed)."""
        ...


class StaticGraphs:
    """A GraphSource held in memory; `put` / `remove` change it (and tell the subscribers)."""

    def __init__(self, graphs: Iterable[InferenceGraph] = ()) -> None:
        self._graphs = {graph.name: graph for graph in graphs}
        self._listeners: list[GraphListener] = []

    def graphs(self) -> Mapping[str, InferenceGraph]:
        return self._graphs

    def subscribe_graphs(self, listener: GraphListener) -> None:
        self._listeners.append(listener)

    def put(self, graph: InferenceGraph) -> None:
        self._graphs[graph.name] = graph
        self._notify(graph.name)

    def remove(self, name: str) -> None:
        if self._graphs.pop(name, None) is not None:
            self._notify(name)

    def _notify(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)
