"""What a gateway knows of the fleet: the controller's watch, applied to a local copy (an EndpointReader).

The copy starts from the watch's snapshot and follows its changes; reads are dictionary lookups on it, so the
request path never waits on the controller. When the watch breaks, the gateway keeps serving from its last copy
(logged once per outage), reconnects with backoff, and resumes from its last resourceVersion (the controller sends
a fresh snapshot when it cannot resume, e.g. after a restart). Wake-ups (a request waits at zero replicas) are sent
to the controller in the background.

InferenceGraphs come with the same watch (GRAPH / GRAPH_DELETED events, the snapshot's `graphs`) and are validated
again here (`InferenceGraph.model_validate`); one this gateway cannot read (a newer controller's) is logged and
left out. `graphs()` / `subscribe_graphs()` make this the gateway's graph source (gateway/graph/source.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from llmserve.control import ControlAPIError, ControlClient
from llmserve.endpoints import Endpoint, Listener, ServiceInfo
from llmserve.protocol.control import decode_endpoint, decode_graph, decode_service
from llmserve.spec.graph import InferenceGraph

log = logging.getLogger("llmserve.gateway")


class WatchedEndpoints:
    """Implements llmserve.endpoints.EndpointReader from the controller's watch."""

    def __init__(
        self,
        client: ControlClient,
        gateway_id: str,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.gateway_id = gateway_id
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.resource_version = ""
        self.synced = asyncio.Event()  # set by the first snapshot
        self.connected = False
        self.last_error: str | None = None
        self.outages = 0
        self._services: dict[str, ServiceInfo] = {}
        self._by_model: dict[str, ServiceInfo] = {}
        self._ready: dict[str, tuple[Endpoint, ...]] = {}
        self._listeners: list[Listener] = []
        self._graphs: dict[str, InferenceGraph] = {}
        self._graph_listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._wakes: dict[str, asyncio.Task[None]] = {}

    # -- EndpointReader --------------------------------------------------------------------------------------------
    def resolve_model(self, model_name: str) -> ServiceInfo | None:
        return self._by_model.get(model_name)

    def services(self) -> list[ServiceInfo]:
        return list(self._services.values())

    def ready_endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self._ready.get(service, ())

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def wake(self, service: str) -> None:
        if service in self._wakes:  # one wake in flight per service is enough
            return
        task = asyncio.get_running_loop().create_task(self._send_wake(service), name=f"wake {service}")
        self._wakes[service] = task
        task.add_done_callback(lambda _: self._wakes.pop(service, None))

    # -- graphs (gateway/graph/source.py's GraphSource) -------------------------------------------------------------
    def graphs(self) -> Mapping[str, InferenceGraph]:
        return self._graphs

    def subscribe_graphs(self, listener: Listener) -> None:
        """Call `listener(graph name)` after every change to that graph (added, changed, removed)."""
        self._graph_listeners.append(listener)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="controller watch")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._wakes.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def describe(self) -> dict[str, Any]:
        return {
            "controller": self.client.url,
            "connected": self.connected,
            "resourceVersion": self.resource_version,
            "last_error": self.last_error,
            "outages": self.outages,
        }

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while True:
            try:
                async for event in self.client.watch(self.resource_version):
                    if not self.connected:
                        self.connected = True
                        if self.outages:
                            log.info("controller watch resumed (%s)", self.client.url)
                        delay = self.backoff_initial_s
                    self.apply(event)
                raise ControlAPIError("the controller ended the watch")
            except ControlAPIError as exc:
                self.last_error = str(exc)
                if self.connected or self.outages == 0:
                    self.outages += 1
                    log.warning(
                        "controller unreachable (%s); serving from the last known state (%d services)",
                        exc,
                        len(self._services),
                    )
                self.connected = False
            except Exception:
                self.connected = False
                log.exception("controller watch failed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    # -- applying events ---------------------------------------------------------------------------------------------
    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        version = event.get("resourceVersion")
        if kind == "SNAPSHOT":
            self._replace(event)
        elif kind == "SERVICE":
            self._set_service(decode_service(event["service"]))
        elif kind == "SERVICE_DELETED":
            self._remove_service(str(event["name"]))
        elif kind == "GRAPH":
            self._set_graph(event.get("graph"))
        elif kind == "GRAPH_DELETED":
            self._remove_graph(str(event["name"]))
        elif kind == "ENDPOINTS":
            name = str(event["service"])
            if name in self._services:
                self._ready[name] = tuple(decode_endpoint(e) for e in event["endpoints"])
                self._notify(name)
        if isinstance(version, str):
            self.resource_version = version

    def _replace(self, snapshot: dict[str, Any]) -> None:
        services = {s.name: s for s in (decode_service(raw) for raw in snapshot.get("services", []))}
        endpoints = {
            name: tuple(decode_endpoint(e) for e in raw)
            for name, raw in (snapshot.get("endpoints") or {}).items()
            if name in services
        }
        changed = {n for n in set(self._services) | set(services) if self._services.get(n) != services.get(n)}
        changed |= {n for n in set(self._ready) | set(endpoints) if self._ready.get(n, ()) != endpoints.get(n, ())}
        self._services = services
        self._by_model = {s.model_name: s for s in services.values()}
        self._ready = {name: endpoints.get(name, ()) for name in services}
        graphs = dict(self._decode_graphs(snapshot.get("graphs") or []))
        changed_graphs = {n for n in set(self._graphs) | set(graphs) if self._graphs.get(n) != graphs.get(n)}
        self._graphs = graphs
        self.synced.set()
        for name in sorted(changed):
            self._notify(name)
        for name in sorted(changed_graphs):
            self._notify_graph(name)

    def _decode_graphs(self, raw: list[Any]) -> list[tuple[str, InferenceGraph]]:
        graphs = []
        for data in raw:
            graph = self._decode_graph(data)
            if graph is not None:
                graphs.append((graph.name, graph))
        return graphs

    @staticmethod
    def _decode_graph(data: Any) -> InferenceGraph | None:
        try:
            return decode_graph(data)
        except (ValidationError, TypeError) as exc:
            name = data.get("metadata", {}).get("name", "?") if isinstance(data, dict) else "?"
            log.error("InferenceGraph '%s' from the controller cannot run on this gateway; left out: %s", name, exc)
            return None

    def _set_graph(self, data: Any) -> None:
        graph = self._decode_graph(data)
        if graph is None:  # not runnable here: the previous version is not what the controller has either
            name = data.get("metadata", {}).get("name") if isinstance(data, dict) else None
            if isinstance(name, str):
                self._remove_graph(name)
            return
        self._graphs[graph.name] = graph
        self._notify_graph(graph.name)

    def _remove_graph(self, name: str) -> None:
        if self._graphs.pop(name, None) is not None:
            self._notify_graph(name)

    def _notify_graph(self, name: str) -> None:
        for listener in self._graph_listeners:
            listener(name)

    def _set_service(self, info: ServiceInfo) -> None:
        previous = self._services.get(info.name)
        if previous is not None and self._by_model.get(previous.model_name) is previous:
            del self._by_model[previous.model_name]
        self._services[info.name] = info
        self._by_model[info.model_name] = info
        self._ready.setdefault(info.name, ())
        self._notify(info.name)

    def _remove_service(self, name: str) -> None:
        info = self._services.pop(name, None)
        if info is not None and self._by_model.get(info.model_name) is info:
            del self._by_model[info.model_name]
        self._ready.pop(name, None)
        self._notify(name)

    def _notify(self, service: str) -> None:
        for listener in self._listeners:
            listener(service)

    async def _send_wake(self, service: str) -> None:
        try:
            await self.client.wake(self.gateway_id, service)
        except ControlAPIError as exc:
            log.warning("could not wake %s: %s", service, exc)
