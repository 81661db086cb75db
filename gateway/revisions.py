"""Which revision of a service serves a request: the controller's traffic split applied per request.

- A request pinned by `x-llmserve-revision` goes to that revision: `latest` (the split's `latest` tag), `prev`
  (its `prev` tag, while a canary runs) or a revision's name (one in the split, or one with ready replicas: a
  canary held at 0 % is reachable this way). Anything else is a 404 naming what exists.
- A request with a session key is placed by a hash of (service, session) on the split's 0-100 line, so a
  session stays on one revision for as long as the split stays; when the canary's share grows from P to P' only
  the sessions between P and P' move, and only towards the canary (the `latest` entry comes first on the line).
- Any other request draws its point from the seeded RNG.
- Fail-open: if the drawn revision has no ready replica while another revision of the split has one, the request
  goes to the ones that have (the point rescaled over them) instead of waiting for a start. Pinned requests never
  move.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection, Sequence

from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.errors import ServingError
from llmserve.traffic import LATEST_TAG, PREV_TAG, TrafficTarget

_SCALE = 100.0 / 2.0**64


def session_point(service: str, session: str) -> float:
    """Where a session sits on the split's [0, 100) line: stable across processes and restarts."""
    digest = hashlib.blake2b(f"{service}\0{session}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _SCALE


class RevisionPicker:
    """Picks a revision per request; one per gateway process (the RNG is its only state)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def narrow(
        self, service: ServiceInfo, endpoints: Sequence[Endpoint], *, pin: str | None, session: str | None
    ) -> tuple[str, Sequence[Endpoint]]:
        """The revision one request goes to and its ready replicas among `endpoints` (possibly none: the request
        then waits for them). A service without a split (an older controller) keeps every endpoint."""
        if not service.traffic:
            return "", endpoints
        by_revision: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            by_revision.setdefault(endpoint.revision, []).append(endpoint)
        if len(by_revision) == 1 and not pin:  # the common case: one revision serves (or is the only one ready)
            (only,) = by_revision
            if any(t.revision == only and t.percent > 0 for t in service.traffic):
                return only, endpoints
        revision = self.pick(
            service.name,
            service.traffic,
            pin=pin,
            session=session,
            serving=by_revision.__contains__,
            known=by_revision.keys(),
        )
        return revision, by_revision.get(revision, ())

    def pick(
        self,
        service: str,
        traffic: Sequence[TrafficTarget],
        *,
        pin: str | None = None,
        session: str | None = None,
        serving: Callable[[str], bool] | None = None,
        known: Collection[str] = (),
    ) -> str:
        """The revision for one request. `serving(revision)`: whether it has a ready replica now (None: do not
        fail over); `known`: other revisions a pin may name (those with ready replicas)."""
        if pin:
            return self._pinned(service, traffic, pin, known)
        targets = [t for t in traffic if t.percent > 0]
        if not targets:
            raise ServingError(503, f"'{service}' has no revision to send traffic to.", code="no_revision")
        point = session_point(service, session) if session else self.rng.random() * 100.0
        chosen = _on_line(targets, point)
        if serving is None or serving(chosen):
            return chosen
        alive = [t for t in targets if serving(t.revision)]
        if not alive:
            return chosen  # nothing is ready anywhere: wait for the drawn one
        total = sum(t.percent for t in alive)
        return _on_line(alive, point * total / 100.0)

    @staticmethod
    def _pinned(service: str, traffic: Sequence[TrafficTarget], pin: str, known: Collection[str]) -> str:
        if pin in (LATEST_TAG, PREV_TAG):
            for target in traffic:
                if target.tag == pin:
                    return target.revision
            raise ServingError(
                404,
                f"'{service}' has no '{pin}' revision now" + (" (no canary is running)." if pin == PREV_TAG else "."),
                code="revision_not_found",
            )
        if pin in known or any(t.revision == pin for t in traffic):
            return pin
        names = sorted({t.revision for t in traffic} | set(known))
        raise ServingError(
            404,
            f"'{service}' has no revision '{pin}' with replicas; use latest, prev or one of: {', '.join(names)}.",
            code="revision_not_found",
        )


def _on_line(targets: Sequence[TrafficTarget], point: float) -> str:
    """The target whose share of the line (in order, cumulative percents) contains `point`."""
    edge = 0.0
    for target in targets:
        edge += target.percent
        if point < edge:
            return target.revision
    return targets[-1].revision
