"""`llmserve get NAME`'s view of a service's revisions, the traffic split between them (KServe's status fields)
and its transformer: a pure function of the service's status dict (GET /control/v1/services/NAME)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmserve.status_table import table

DASH = "-"


def revision_lines(service: Mapping[str, Any]) -> list[str]:
    """Indented lines: the rollout, the revisions with their share and replicas, the transformer's replicas.

    latestCreatedRevision=chat-00002 latestReadyRevision=chat-00002 latestRolledoutRevision=chat-00001 ...
    traffic: chat-00002 20% (latest), chat-00001 80% (prev)
    REVISION    STATE  TRAFFIC  TAGS    READY  DESIRED  FAILURE
    chat-00001  ready  80%      prev    1/1    1        -
    """
    lines: list[str] = []
    predictor = (service.get("components") or {}).get("predictor") or {}
    names = ("latestCreatedRevision", "latestReadyRevision", "latestRolledoutRevision", "previousRolledoutRevision")
    if predictor:
        lines.append("  " + "  ".join(f"{name}={predictor.get(name) or DASH}" for name in names))
        split = [
            f"{t.get('revisionName')} {t.get('percent')}%" + (f" ({t['tag']})" if t.get("tag") else "")
            for t in predictor.get("traffic") or ()
        ]
        lines.append("  traffic: " + (", ".join(split) or "none"))
    if service.get("reason"):
        lines.append(f"  not ready: {service['reason']}")
    revisions: Sequence[Mapping[str, Any]] = service.get("revisions") or ()
    if revisions:
        tags: dict[str, list[str]] = {}
        for target in predictor.get("traffic") or ():
            if target.get("tag"):
                tags.setdefault(str(target.get("revisionName")), []).append(str(target["tag"]))
        rows = [
            (
                r.get("name"),
                r.get("state", DASH),
                f"{r.get('traffic_percent', 0)}%",
                ",".join(tags.get(str(r.get("name")), ())) or DASH,
                f"{r.get('ready_replicas', 0)}/{r.get('replicas', 0)}",
                r.get("desired_replicas", DASH),
                r.get("failure") or DASH,
            )
            for r in revisions
        ]
        header = ("REVISION", "STATE", "TRAFFIC", "TAGS", "READY", "DESIRED", "FAILURE")
        lines += ["  " + line for line in table(header, rows)]
    transformer = service.get("transformer")
    if transformer:
        lines.append(
            f"  transformer {transformer.get('handler')}: ready {transformer.get('ready_replicas')}"
            f"/{transformer.get('desired_replicas')} (min {transformer.get('min_replicas')}, "
            f"max {transformer.get('max_replicas')})"
        )
    return lines


def replicas_of(service: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The predictor's replicas, then the transformer's."""
    transformer = service.get("transformer") or {}
    return [*(service.get("replicas") or ()), *(transformer.get("replicas") or ())]
