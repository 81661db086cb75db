"""A gateway on a real port in front of fake workers, for tests that need real HTTP and real clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from gateway.app import Gateway, build_gateway
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from tests.support.fake_worker import FakeWorker
from tests.support.servers import ServerThread, serving


@dataclass
class Stack:
    gateway: ServerThread
    registry: EndpointRegistry
    parts: Gateway
    workers: list[FakeWorker] = field(default_factory=list)
    worker_servers: list[ServerThread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def on_loop(self, fn: object, *args: object) -> object:
        return self.gateway.call(fn, *args)


@contextmanager
def gateway_stack(
    workers: int = 1,
    settings: GatewaySettings | None = None,
    models: tuple[str, ...] = ("m",),
) -> Iterator[Stack]:
    registry = EndpointRegistry()
    with ExitStack() as stack:
        fakes = [FakeWorker(f"w{i}") for i in range(workers)]
        servers = [stack.enter_context(serving(fake)) for fake in fakes]
        for model in models:
            registry.declare_service(ServiceInfo(name=model, model_name=model))
            for i, server in enumerate(servers):
                registry.publish(Endpoint(service=model, replica_id=f"{model}-{i}", url=server.url))
        parts = build_gateway(settings or GatewaySettings(), registry)
        gateway = stack.enter_context(serving(parts.app))
        yield Stack(gateway=gateway, registry=registry, parts=parts, workers=fakes, worker_servers=servers)
