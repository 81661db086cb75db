"""Which V2 or KServe V1 request a path is: the model it names, the route label, the method it takes.

    /v2/models/{name}[/versions/{v}]            GET   v2_metadata
    /v2/models/{name}[/versions/{v}]/ready      GET   v2_ready
    /v2/models/{name}[/versions/{v}]/infer      POST  v2_infer
    /v2/models/{name}[/versions/{v}]/explain    POST  v2_explain
    /v1/models/{name}:predict                   POST  v1_predict
    /v1/models/{name}:explain                   POST  v1_explain

Anything else under /v2/models is not forwarded (404): the runtime's repository API stays per replica.
"""

from __future__ import annotations

from dataclasses import dataclass

_V2_ACTIONS = {"": ("v2_metadata", "GET"), "ready": ("v2_ready", "GET"),
               "infer": ("v2_infer", "POST"), "explain": ("v2_explain", "POST")}  # fmt: skip
_V1_VERBS = {"predict": "v1_predict", "explain": "v1_explain"}


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    route: str  # metrics label
    method: str  # the one method the route takes


def v2_target(path: str) -> Target | None:
    """The model route `path` names under /v2/models, or None."""
    parts = path.split("/")  # ['', 'v2', 'models', name, ...]
    if len(parts) < 4 or parts[2] != "models" or not parts[3]:
        return None
    rest = parts[4:]
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        rest = rest[2:]
    if len(rest) > 1:
        return None
    found = _V2_ACTIONS.get(rest[0] if rest else "")
    if found is None:
        return None
    return Target(parts[3], found[0], found[1])


def v1_target(path: str) -> Target | None:
    """KServe V1's `/v1/models/{name}:predict` or `:explain`, or None."""
    name, _, verb = path.removeprefix("/v1/models/").rpartition(":")
    route = _V1_VERBS.get(verb)
    if route is None or not name or "/" in name:
        return None
    return Target(name, route, "POST")


def is_v1_call(path: str) -> bool:
    """Cheap pre-check for the fast path: a POST under /v1/models/ ending in a V1 verb."""
    return path.endswith((":predict", ":explain"))
