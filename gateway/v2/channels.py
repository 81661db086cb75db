"""gRPC channels from the gateway to V2 replicas: one per replica, opened on first use, closed once the replica
is no longer ready (unpublished, restarted elsewhere, service withdrawn) and its calls in flight have ended."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grpc import aio

from llmserve.endpoints import Endpoint, EndpointReader


@dataclass(eq=False)
class _Channel:
    service: str
    address: str
    channel: aio.Channel
    calls: int = 0
    retired: bool = False


class ChannelCache:
    """gRPC channels to replicas, by replica id; a channel closes once its replica is gone and idle."""

    def __init__(self, endpoints: EndpointReader, options: Sequence[tuple[str, Any]]) -> None:
        self._endpoints = endpoints
        self._options = list(options)
        self._open: dict[str, _Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._closed = False
        endpoints.subscribe(self._changed)

    def replicas(self) -> set[str]:
        """Replica ids with an open channel."""
        return set(self._open)

    def acquire(self, endpoint: Endpoint, address: str) -> _Channel:
        entry = self._open.get(endpoint.replica_id)
        if entry is None or entry.address != address:  # new, or restarted on another port
            if entry is not None:
                self._retire(endpoint.replica_id)
            channel = aio.insecure_channel(address, options=self._options)
            entry = self._open[endpoint.replica_id] = _Channel(endpoint.service, address, channel)
        entry.calls += 1
        return entry

    def release(self, entry: _Channel) -> None:
        entry.calls -= 1
        if entry.retired and entry.calls == 0:
            self._close(entry)

    async def close(self) -> None:
        self._closed = True
        entries, self._open = list(self._open.values()), {}
        for entry in entries:
            await entry.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _changed(self, service: str) -> None:
        if self._closed:
            return
        live = {e.replica_id for e in self._endpoints.ready_endpoints(service)}
        for replica_id in [r for r, e in self._open.items() if e.service == service and r not in live]:
            self._retire(replica_id)

    def _retire(self, replica_id: str) -> None:
        entry = self._open.pop(replica_id)
        entry.retired = True
        if entry.calls == 0:
            self._close(entry)

    def _close(self, entry: _Channel) -> None:
        task = self._loop.create_task(entry.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
