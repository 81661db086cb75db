"""The control API's wire format for what revisions, transformers and logging added: nested values of a service
round-trip through JSON; demand reports carry an optional per-revision breakdown (older reports still accepted)."""

from __future__ import annotations

import orjson

from controller.demand import DemandAggregator
from llmserve.endpoints import Demand, Endpoint, ServiceInfo
from llmserve.payload_policy import LogPolicy
from llmserve.protocol.control import (
    DemandReport,
    ServiceDemand,
    decode_endpoint,
    decode_service,
    encode_endpoint,
    encode_service,
)
from llmserve.traffic import TrafficTarget

INFO = ServiceInfo(
    name="chat",
    model_name="chat",
    created=1,
    revision="chat-00001",
    traffic=(TrafficTarget("chat-00002", 20, "latest"), TrafficTarget("chat-00001", 80, "prev")),
    transformer_timeout_s=5.0,
    logger=LogPolicy(
        mode="response",
        url="http://sink:9/events",
        file="/var/log/chat.jsonl",
        sample_rate=0.5,
        metadata_headers=frozenset({"x-tenant", "x-user"}),
        annotations={"team": "ml"},
        namespace="prod",
    ),
)


def test_a_service_with_a_split_a_transformer_and_a_logger_round_trips() -> None:
    wire = orjson.loads(orjson.dumps(encode_service(INFO)))
    assert wire["traffic"][0] == {"revision": "chat-00002", "percent": 20, "tag": "latest"}
    assert wire["logger"]["metadata_headers"] == ["x-tenant", "x-user"]
    assert decode_service(wire) == INFO


def test_an_older_controller_s_service_and_a_newer_one_s_fields() -> None:
    old = {"name": "chat", "model_name": "chat", "protocol": "openai", "created": 1}
    decoded = decode_service(old)
    assert (decoded.traffic, decoded.logger, decoded.transformer_timeout_s) == ((), None, None)
    assert decode_service({**old, "something_new": {"a": 1}}) == decoded


def test_an_endpoint_carries_its_component() -> None:
    transformer = Endpoint("chat", "chat-transformer-0", "http://t:1", component="transformer")
    assert decode_endpoint(orjson.loads(orjson.dumps(encode_endpoint(transformer)))) == transformer
    assert decode_endpoint({"service": "chat", "replica_id": "r", "url": "http://r:1"}).component == "predictor"


def test_demand_reports_with_and_without_a_revision_breakdown() -> None:
    by_revision = Demand(3, 30, 1, 10, 9, {"chat-00001": Demand(2, 20, 0, 0, 7), "chat-00002": Demand(1, 10, 1, 10, 2)})
    new = DemandReport.model_validate_json(
        DemandReport(gateway="g1", seq=1, services={"chat": ServiceDemand.of(by_revision)}).model_dump_json()
    )
    old = DemandReport.model_validate_json(b'{"gateway": "g2", "seq": 1, "services": {"chat": {"in_flight": 4}}}')
    aggregator = DemandAggregator()
    for report in (new, old):
        aggregator.report(report.gateway, report.seq, {k: v.demand() for k, v in report.services.items()})
    assert aggregator.demand("chat").in_flight == 7
    assert aggregator.revision_demand("chat", "chat-00002") == Demand(1, 10, 1, 10, 2)
    assert aggregator.revision_demand("chat", "chat-00001").in_flight == 2
    assert aggregator.revision_demand("chat", "").in_flight == 4  # the older gateway's, unattributed
