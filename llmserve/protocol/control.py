"""The control API's wire format (version 1): what the controller serves and gateways and the CLI send.

    GET    /control/v1/state                      the snapshot: services, ready endpoints and graphs, with a
                                                  resourceVersion
    GET    /control/v1/watch?resourceVersion=RV   NDJSON events: the snapshot (or, resuming, the changes after RV)
                                                  then every change; BOOKMARK lines keep an idle stream alive
    POST   /control/v1/demand                     a gateway's demand report (sequence-numbered)
    POST   /control/v1/wake                       a request waits for a service that has no ready replica
    POST   /control/v1/suspect                    a gateway took a replica out of rotation (unreachable, engine dead)
    GET    /control/v1/services[/NAME]            services with revisions and replicas (`llmserve get`)
    PUT    /control/v1/services                   create or change the services and InferenceGraphs of a YAML file
                                                  (`llmserve apply`)
    DELETE /control/v1/services/NAME              remove a service (`llmserve delete`; 409 while a graph calls it)
    GET    /control/v1/graphs[/NAME]              InferenceGraphs with the readiness of the services they call
    DELETE /control/v1/graphs/NAME                remove an InferenceGraph (`llmserve delete graph/NAME`)
    GET    /control/v1/status                     services, the autoscaler's decisions, gateways, the backend
    GET    /control/v1/prometheus/targets         Prometheus HTTP service discovery of the replicas' /metrics

Every route but /health needs `Authorization: Bearer <control token>`. Errors are `{"error": "..."}`.
Graphs travel as applied (`InferenceGraph.model_dump(mode="json", by_alias=True)`, GRAPH / GRAPH_DELETED events
and the snapshot's `graphs`); gateways validate them again. A gateway that predates graphs ignores both.
A resourceVersion is opaque to clients ("<epoch>.<sequence>": a restarted controller starts a new epoch, and a
watch resumed from another epoch, or from a version older than the controller keeps, starts with a fresh snapshot).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.endpoints import Demand, Endpoint, ServiceInfo
from llmserve.payload_policy import LogPolicy
from llmserve.spec.graph import InferenceGraph
from llmserve.traffic import TrafficTarget

PREFIX = "/control/v1"
WATCH_CONTENT_TYPE = "application/x-ndjson"
BOOKMARK_INTERVAL_S = 5.0  # an idle watch still gets a line this often: silence longer than ~3x means trouble

EventType = Literal["SNAPSHOT", "SERVICE", "SERVICE_DELETED", "ENDPOINTS", "GRAPH", "GRAPH_DELETED", "BOOKMARK"]

_SERVICE_FIELDS = frozenset(f.name for f in dataclasses.fields(ServiceInfo))
_ENDPOINT_FIELDS = frozenset(f.name for f in dataclasses.fields(Endpoint))


def encode_service(info: ServiceInfo) -> dict[str, Any]:
    data = dataclasses.asdict(info)  # the traffic split's targets become objects
    data["logger"] = info.logger.as_dict() if info.logger is not None else None
    return data


def decode_service(data: Mapping[str, Any]) -> ServiceInfo:
    """A ServiceInfo from the wire; fields this side does not know (a newer controller) are ignored, nested ones
    (the traffic split, the logger policy) become their types again."""
    known = {k: v for k, v in data.items() if k in _SERVICE_FIELDS}
    if "traffic" in known:
        known["traffic"] = tuple(TrafficTarget.from_dict(t) for t in known["traffic"] or ())
    if known.get("logger") is not None:
        known["logger"] = LogPolicy.from_dict(known["logger"])
    return ServiceInfo(**known)


def encode_endpoint(endpoint: Endpoint) -> dict[str, Any]:
    return dataclasses.asdict(endpoint)


def decode_endpoint(data: Mapping[str, Any]) -> Endpoint:
    return Endpoint(**{k: v for k, v in data.items() if k in _ENDPOINT_FIELDS})


def encode_graph(graph: InferenceGraph) -> dict[str, Any]:
    return graph.model_dump(mode="json", by_alias=True)


def decode_graph(data: Mapping[str, Any]) -> InferenceGraph:
    """An InferenceGraph from the wire, validated again (pydantic's ValidationError when it is not one)."""
    return InferenceGraph.model_validate(data)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RevisionDemand(_Wire):
    """Demand as one gateway sees it: a service's, or one revision's share of it."""

    in_flight: int = Field(default=0, ge=0, description="Requests dispatched to replicas, response not ended.")
    in_flight_tokens: int = Field(default=0, ge=0, description="Their prompt + expected output tokens.")
    held: int = Field(default=0, ge=0, description="Requests the activator holds (no ready replica).")
    held_tokens: int = Field(default=0, ge=0, description="Their tokens.")
    arrived: int = Field(default=0, ge=0, description="Requests received since the gateway started (a counter).")

    @classmethod
    def counts(cls, demand: Demand) -> dict[str, int]:
        return {
            "in_flight": max(0, demand.in_flight),
            "in_flight_tokens": max(0, demand.in_flight_tokens),
            "held": max(0, demand.held),
            "held_tokens": max(0, demand.held_tokens),
            "arrived": max(0, demand.arrived),
        }


class ServiceDemand(RevisionDemand):
    """One service's demand as one gateway sees it (llmserve.endpoints.Demand on the wire)."""

    revisions: dict[str, RevisionDemand] = Field(
        default_factory=dict,
        description="The same per revision the requests went to (optional: older gateways do not send it).",
    )

    @classmethod
    def of(cls, demand: Demand) -> ServiceDemand:
        revisions = {name: RevisionDemand(**RevisionDemand.counts(d)) for name, d in demand.revisions.items()}
        return cls(**cls.counts(demand), revisions=revisions)

    def demand(self) -> Demand:
        revisions = {
            name: Demand(d.in_flight, d.in_flight_tokens, d.held, d.held_tokens, d.arrived)
            for name, d in self.revisions.items()
        }
        return Demand(self.in_flight, self.in_flight_tokens, self.held, self.held_tokens, self.arrived, revisions)


class DemandReport(_Wire):
    gateway: str = Field(min_length=1, max_length=200, description="The reporting gateway's id (unique per start).")
    seq: int = Field(ge=0, description="Increases with every report of this gateway; older ones are ignored.")
    services: dict[str, ServiceDemand] = Field(default_factory=dict, description="Demand per service name.")


class WakeRequest(_Wire):
    gateway: str = Field(min_length=1, max_length=200)
    service: str = Field(min_length=1, max_length=253)


class SuspectReport(_Wire):
    gateway: str = Field(min_length=1, max_length=200)
    service: str = Field(min_length=1, max_length=253)
    replica: str = Field(min_length=1, max_length=253)
    url: str = Field(min_length=1, max_length=2048)
    reason: str = Field(default="", max_length=1000)


def snapshot_event(
    resource_version: str,
    services: list[ServiceInfo],
    endpoints: Mapping[str, tuple[Endpoint, ...]],
    graphs: Sequence[InferenceGraph] = (),
) -> dict[str, Any]:
    return {
        "type": "SNAPSHOT",
        "resourceVersion": resource_version,
        "services": [encode_service(s) for s in services],
        "endpoints": {name: [encode_endpoint(e) for e in eps] for name, eps in endpoints.items()},
        "graphs": [encode_graph(g) for g in graphs],
    }


def service_event(resource_version: str, info: ServiceInfo) -> dict[str, Any]:
    return {"type": "SERVICE", "resourceVersion": resource_version, "service": encode_service(info)}


def service_deleted_event(resource_version: str, name: str) -> dict[str, Any]:
    return {"type": "SERVICE_DELETED", "resourceVersion": resource_version, "name": name}


def endpoints_event(resource_version: str, service: str, endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    return {
        "type": "ENDPOINTS",
        "resourceVersion": resource_version,
        "service": service,
        "endpoints": [encode_endpoint(e) for e in endpoints],
    }


def graph_event(resource_version: str, graph: InferenceGraph) -> dict[str, Any]:
    return {"type": "GRAPH", "resourceVersion": resource_version, "graph": encode_graph(graph)}


def graph_deleted_event(resource_version: str, name: str) -> dict[str, Any]:
    return {"type": "GRAPH_DELETED", "resourceVersion": resource_version, "name": name}


def bookmark_event(resource_version: str) -> dict[str, Any]:
    return {"type": "BOOKMARK", "resourceVersion": resource_version}
