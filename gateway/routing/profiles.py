"""Routing profiles: named combinations of filters, weighted scorers and a picker, from YAML or built in.

```yaml
apiVersion: serving.llmserve.io/v1alpha1
kind: RoutingProfile
metadata: {name: token-aware}
spec:
  filters: [{type: fresh-signals}, {type: load-cap, maxExcessRequests: 8}]
  scorers:
    - {type: prefix-cache, weight: 3}
    - {type: queue-depth, weight: 1}
  picker: {type: max-score}
```
An InferenceService chooses one with `spec.predictor.routing.profile` (default: token-aware).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.routing.base import Candidate, Filter, Learner, Picker, RouteContext, Scorer
from gateway.routing.decision import TIE, winning_scorer
from gateway.routing.filters import FILTERS
from gateway.routing.pickers import PICKERS
from gateway.routing.scorers import SCORERS

DEFAULT_PROFILE = "token-aware"


class RoutingProfileError(ValueError):
    """A routing profile that cannot be used; the message names the file and the field."""


class PluginRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    weight: float = Field(default=1.0, ge=0, description="Scorers only: the weight of this score in the sum.")

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filters: list[PluginRef] = Field(default_factory=list)
    scorers: list[PluginRef] = Field(default_factory=list)
    picker: PluginRef = Field(default_factory=lambda: PluginRef(type="max-score"))


class ProfileMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)


class RoutingProfileDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["serving.llmserve.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["RoutingProfile"]
    metadata: ProfileMetadata
    spec: ProfileSpec


BUILTIN: dict[str, ProfileSpec] = {
    "round-robin": ProfileSpec(picker=PluginRef(type="round-robin")),
    "least-request": ProfileSpec(scorers=[PluginRef(type="least-request")]),
    "prefix-chars": ProfileSpec(scorers=[PluginRef(type="char-prefix")]),  # production-stack's prefix routing
    "token-aware": ProfileSpec(
        filters=[PluginRef(type="fresh-signals")],  # no load-cap: prefill-wait already weighs affinity against load
        scorers=[
            PluginRef(type="prefix-cache", weight=3),  # must come before prefill-wait (which reads its matches)
            PluginRef(type="prefill-wait", weight=3),
            PluginRef(type="queue-depth", weight=1),
            PluginRef(type="kv-cache", weight=1),
            PluginRef(type="inflight-tokens", weight=1),
            PluginRef(type="session-affinity", weight=2),
            PluginRef(type="lora-affinity", weight=2),
        ],
    ),
}


@dataclass
class Profile:
    name: str
    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker
    learners: list[Learner] = field(init=False)

    def __post_init__(self) -> None:
        self.learners = [p for p in self.plugins() if callable(getattr(p, "learn", None))]  # type: ignore[misc]

    def plugins(self) -> Iterable[object]:
        yield from self.filters
        yield from (s for s, _ in self.scorers)
        yield self.picker

    def choose(self, ctx: RouteContext, candidates: list[Candidate]) -> Candidate:
        return self.decide(ctx, candidates)[0]

    def decide(self, ctx: RouteContext, candidates: list[Candidate]) -> tuple[Candidate, str]:
        """The chosen candidate and what chose it: the winning scorer's name (decision.winning_scorer), TIE, or
        the picker's name when the profile has no scorers."""
        for candidate_filter in self.filters:
            kept = candidate_filter.filter(ctx, candidates)
            if kept:  # a filter that leaves nothing is ignored: fail open
                candidates = kept
        totals = [0.0] * len(candidates)
        scores: list[list[float]] = []
        for scorer, weight in self.scorers:
            values = scorer.score(ctx, candidates)
            scores.append(values)
            for i, value in enumerate(values):
                totals[i] += weight * value
        chosen = self.picker.pick(ctx, candidates, totals)
        for learner in self.learners:
            learner.learn(ctx, chosen)
        if not self.scorers:
            return chosen, self.picker.name
        names = [scorer.name for scorer, _ in self.scorers]
        weights = [weight for _, weight in self.scorers]
        index = next(i for i, c in enumerate(candidates) if c is chosen)
        return chosen, winning_scorer(names, weights, scores, totals, index) or TIE


def _build_plugin(kind: str, ref: PluginRef, registry: dict[str, Any], *extra: Any) -> Any:
    cls = registry.get(ref.type)
    if cls is None:
        raise RoutingProfileError(f"{kind}: unknown type '{ref.type}'; known: {', '.join(sorted(registry))}")
    try:
        params = cls.Params.model_validate(ref.params())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RoutingProfileError(f"{kind} '{ref.type}': {where}: {first['msg']}") from None
    return cls(params, *extra)


def profile_rng(name: str, seed: int | None) -> random.Random:
    """The random source of one profile's picker: seeded from (seed, profile name), so a profile's draws are
    reproducible and do not depend on how often other profiles drew; unseeded (fresh entropy) when seed is None."""
    return random.Random() if seed is None else random.Random(f"{seed}/{name}")


def build_profile(
    name: str,
    spec: ProfileSpec,
    *,
    rng: random.Random | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Profile:
    """`rng` (if given) wins over `seed`; with neither, the picker draws from fresh entropy."""
    rng = rng or profile_rng(name, seed)
    return Profile(
        name=name,
        filters=[_build_plugin("filters", ref, FILTERS, clock) for ref in spec.filters],
        scorers=[(_build_plugin("scorers", ref, SCORERS), ref.weight) for ref in spec.scorers],
        picker=_build_plugin("picker", spec.picker, PICKERS, rng),
    )


def load_profile_file(path: Path) -> tuple[str, ProfileSpec]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        parsed = RoutingProfileDoc.model_validate(document)
    except (OSError, yaml.YAMLError) as exc:
        raise RoutingProfileError(f"{path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RoutingProfileError(f"{path}: {where}: {first['msg']}") from None
    try:
        build_profile(parsed.metadata.name, parsed.spec)  # validates plugin types and parameters
    except RoutingProfileError as exc:
        raise RoutingProfileError(f"{path}: spec.{exc}") from None
    return parsed.metadata.name, parsed.spec


def load_profiles(
    directory: Path | None = None,
    *,
    rng: random.Random | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Profile]:
    """The built-in profiles, overridden or extended by every *.yaml in `directory`.

    Randomness (pickers' tie-breaks and draws): `seed` gives every profile its own generator seeded from (seed,
    name), so runs repeat draw for draw; `rng` shares one generator between all profiles; with neither, each
    profile draws from fresh entropy."""
    specs = dict(BUILTIN)
    if directory is not None:
        for path in sorted(directory.glob("*.yaml")):
            name, spec = load_profile_file(path)
            specs[name] = spec
    return {name: build_profile(name, spec, rng=rng, seed=seed, clock=clock) for name, spec in specs.items()}
