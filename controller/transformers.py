"""A service's transformer replicas (`spec.transformer`): their own replica set and plan, next to the predictor's
revisions.

Transformer replicas are supervised like predictor replicas (controller/replica.py: health, restart with backoff,
drain) and published to gateways as endpoints of the service with `component="transformer"`, which gateways call
for the hooks and never route requests to. They are not revisioned: a changed `spec.transformer` replaces the
replicas (the old ones stop, new ones start; meanwhile requests wait for a transformer, as they would at zero).
They scale with the service: `minReplicas` while the predictor has no replica, at least one while it has, and up
to `maxReplicas` on the service's demand (every request passes through the transformer), `scaleTarget` requests
in flight per replica.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.replica import Publisher, Replica
from llmserve.endpoints import Endpoint
from llmserve.spec import InferenceService
from llmserve.spec.models import TransformerSpec

TRANSFORMER: Literal["transformer"] = (
    "transformer"  # the component, and the revision transformer replicas are recorded under (state dir, status)
)


def transformer_template(spec: TransformerSpec) -> str:
    """A hash of what a transformer's replicas run: a change to it replaces them."""
    served = spec.model_dump(mode="json", by_alias=True, exclude={"min_replicas", "max_replicas", "scale_target"})
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:16]


def replica_id(service: str, index: int) -> str:
    return f"{service}-{TRANSFORMER}-{index}"


@dataclass
class TransformerSet:
    """The transformer replicas of one service."""

    service: InferenceService  # the spec they were planned from (spec.transformer is set)
    template: str
    replicas: dict[str, Replica] = field(default_factory=dict)
    next_index: int = 0
    desired: int = 0  # what the autoscaler asked for (the target also follows the predictor: see `target`)

    @property
    def spec(self) -> TransformerSpec:
        transformer = self.service.spec.transformer
        assert transformer is not None
        return transformer

    def clamp(self, replicas: int) -> int:
        return max(self.spec.min_replicas, min(replicas, self.spec.replica_ceiling))

    def target(self, predictor_desired: int) -> int:
        """Replicas to run: the autoscaler's count, at least one while the predictor has replicas."""
        floor = 1 if predictor_desired > 0 else 0
        return self.clamp(max(self.desired, floor))

    def ready_count(self) -> int:
        return sum(r.ready for r in self.replicas.values())

    def as_dict(self, predictor_desired: int) -> dict[str, Any]:
        spec = self.spec
        return {
            "handler": spec.handler,
            "template": self.template,
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.replica_ceiling,
            "desired_replicas": self.target(predictor_desired),
            "ready_replicas": self.ready_count(),
            "replicas": [r.record.as_dict() for r in self.replicas.values()],
        }


class TransformerPublisher:
    """Publishes a transformer replica's endpoint as the service's transformer (component="transformer")."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    def publish(self, endpoint: Endpoint) -> None:
        self._publisher.publish(dataclasses.replace(endpoint, component=TRANSFORMER))

    def unpublish(self, service: str, replica_id: str) -> None:
        self._publisher.unpublish(service, replica_id)
