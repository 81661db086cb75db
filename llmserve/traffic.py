"""How a service's traffic is split between its revisions: what the controller's rollout decides and the gateway
applies per request (`controller/rollout.py` writes it, `gateway/revisions.py` reads it; neither imports the
other). Serialised with the service's other facts on the control API.
"""

from __future__ import annotations

from dataclasses import dataclass

LATEST_TAG = "latest"  # the latest ready revision (KServe's tag `latest`)
PREV_TAG = "prev"  # the last rolled-out revision while a canary runs (KServe's tag `prev`)
REVISION_HEADER = "x-llmserve-revision"  # pins a request: `latest`, `prev` or a revision name


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One entry of a split, as in Knative's route status: `percent` of the requests go to `revision`.

    A split's percents add up to 100. The same revision may appear twice (a canary whose new revision never
    became ready: `latest` and `prev` both name the old one). A 0 % entry still names its tag's revision.
    """

    revision: str
    percent: int
    tag: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"revision": self.revision, "percent": self.percent, "tag": self.tag}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrafficTarget:
        tag = data.get("tag")
        return cls(str(data["revision"]), int(str(data["percent"])), str(tag) if tag is not None else None)


def percent_by_revision(traffic: tuple[TrafficTarget, ...]) -> dict[str, int]:
    """Each revision's total share, in the split's order."""
    totals: dict[str, int] = {}
    for target in traffic:
        totals[target.revision] = totals.get(target.revision, 0) + target.percent
    return totals
