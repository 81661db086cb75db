"""What V2 REST and gRPC share beyond dispatch: which V2 service a model name belongs to, the routing context of
a V2 request, and whether the fleet of V2 services is ready.

V2 requests carry no tokens: they count 0 tokens in the ledger (scale V2 services on concurrency) and route with
the `least-request` profile unless the service names another (gateway/routing/scheduler.py).
"""

from __future__ import annotations

from gateway.routing import RouteContext
from llmserve.endpoints import EndpointReader, ServiceInfo
from llmserve.protocol.errors import ServingError
from llmserve.protocol.openai import OpenAIRequest


class V2Services:
    def __init__(self, endpoints: EndpointReader) -> None:
        self.endpoints = endpoints

    def service(self, model: str) -> ServiceInfo:
        """The V2 service serving `model`; 404 for unknown models and for LLM (OpenAI) services."""
        info = self.endpoints.resolve_model(model)
        if info is None or info.protocol != "v2":
            raise ServingError.model_not_found(model)
        return info

    @staticmethod
    def context(service: ServiceInfo, route: str, body_size: int) -> RouteContext:
        """How routing sees a V2 request: its model, no prompt, no expected output."""
        request = OpenAIRequest.model_construct(model=service.model_name, max_tokens=0)
        return RouteContext(service=service, route=route, request=request, body_size=body_size)

    def waiting_services(self) -> list[str]:
        """V2 services that should be up (minReplicas > 0) and have no ready replica: the server is not ready."""
        return [
            s.name
            for s in self.endpoints.services()
            if s.protocol == "v2" and s.min_replicas > 0 and not self.endpoints.ready_endpoints(s.name)
        ]
