"""The controller's published state: services and their ready endpoints, and InferenceGraphs, versioned, with a
watch.

Every change gets the next resourceVersion ("<epoch>.<sequence>"; the epoch is new at every controller start) and
is kept in a bounded history, so a watch resumed from a recent version gets just the changes it missed, and one
from an older version, or from another epoch, gets a fresh snapshot. Watchers get changes through bounded queues;
one that falls behind is told to start over from a snapshot rather than slowing anyone down.

This is the controller's implementation of llmserve.endpoints.EndpointWriter and of controller.graphs.GraphWriter.
One event loop: no locking.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.control import (
    endpoints_event,
    graph_deleted_event,
    graph_event,
    service_deleted_event,
    service_event,
    snapshot_event,
)
from llmserve.spec.graph import InferenceGraph

Event = dict[str, Any]


class Watcher:
    """One watch stream's queue of changes. `behind` once it overflowed: it must start over from a snapshot."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(limit)
        self.behind = False
        self.ended = asyncio.Event()

    def end(self) -> None:
        self.ended.set()

    def offer(self, event: Event) -> None:
        if self.behind:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.behind = True  # the stream sees it at its next read and starts over

    def restart(self) -> None:
        """Forget the queued changes (the stream sends a snapshot of the current state instead)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.behind = False


class ControlState:
    def __init__(self, *, history: int = 1024, watcher_queue: int = 1024, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(4)
        self._seq = 0
        self._services: dict[str, ServiceInfo] = {}
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._graphs: dict[str, InferenceGraph] = {}
        self._history: deque[tuple[int, Event]] = deque(maxlen=history)
        self._watchers: set[Watcher] = set()
        self._watcher_queue = watcher_queue

    # -- reading -------------------------------------------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        return f"{self.epoch}.{self._seq}"

    def services(self) -> list[ServiceInfo]:
        return list(self._services.values())

    def service(self, name: str) -> ServiceInfo | None:
        return self._services.get(name)

    def ready_endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self._endpoints.get(service, ())

    def graphs(self) -> list[InferenceGraph]:
        return list(self._graphs.values())

    def snapshot(self) -> Event:
        return snapshot_event(self.resource_version, self.services(), dict(self._endpoints), self.graphs())

    def changes_since(self, resource_version: str) -> list[Event] | None:
        """The events after `resource_version`, or None when they are not all kept (another epoch, too old,
        malformed): the caller must send a snapshot instead."""
        epoch, _, seq_text = resource_version.partition(".")
        if epoch != self.epoch or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq > self._seq:
            return None
        if seq == self._seq:
            return []
        oldest = self._history[0][0] if self._history else self._seq + 1
        if seq + 1 < oldest:
            return None
        return [event for event_seq, event in self._history if event_seq > seq]

    def watch(self) -> Watcher:
        watcher = Watcher(self._watcher_queue)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def watchers(self) -> int:
        return len(self._watchers)

    def end_watches(self) -> None:
        """Ask every watch stream to end (the controller is stopping; gateways reconnect to the next one)."""
        for watcher in self._watchers:
            watcher.end()

    # -- writing (EndpointWriter) --------------------------------------------------------------------------------
    def declare_service(self, info: ServiceInfo) -> None:
        if self._services.get(info.name) == info:
            return
        self._services[info.name] = info
        self._endpoints.setdefault(info.name, ())
        self._emit(lambda rv: service_event(rv, info))

    def withdraw_service(self, name: str) -> None:
        if name not in self._services:
            return
        del self._services[name]
        self._endpoints.pop(name, None)
        self._emit(lambda rv: service_deleted_event(rv, name))

    def publish(self, endpoint: Endpoint) -> None:
        current = self._endpoints.get(endpoint.service, ())
        if endpoint in current:
            return
        others = tuple(e for e in current if e.replica_id != endpoint.replica_id)
        self.set_endpoints(endpoint.service, (*others, endpoint))

    def unpublish(self, service: str, replica_id: str) -> None:
        current = self._endpoints.get(service, ())
        remaining = tuple(e for e in current if e.replica_id != replica_id)
        if len(remaining) != len(current):
            self.set_endpoints(service, remaining)

    def set_endpoints(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        if service not in self._services or self._endpoints.get(service) == endpoints:
            return
        self._endpoints[service] = endpoints
        self._emit(lambda rv: endpoints_event(rv, service, endpoints))

    # -- writing (GraphWriter) -----------------------------------------------------------------------------------
    def declare_graph(self, graph: InferenceGraph) -> None:
        if self._graphs.get(graph.name) == graph:
            return
        self._graphs[graph.name] = graph
        self._emit(lambda rv: graph_event(rv, graph))

    def withdraw_graph(self, name: str) -> None:
        if self._graphs.pop(name, None) is not None:
            self._emit(lambda rv: graph_deleted_event(rv, name))

    # -- internals -----------------------------------------------------------------------------------------------
    def _emit(self, make: Callable[[str], Event]) -> None:
        self._seq += 1
        event: Event = make(self.resource_version)
        self._history.append((self._seq, event))
        for watcher in self._watchers:
            watcher.offer(event)
