from __future__ import annotations

from pathlib import Path

import pytest

from gateway.routing.profiles import BUILTIN, Profile, RoutingProfileError, load_profile_file, load_profiles
from tests.unit.gateway.routing.helpers import candidate, context

GOOD = """
apiVersion: serving.llmserve.io/v1alpha1
kind: RoutingProfile
metadata: {name: mine}
spec:
  filters: [{type: load-cap, maxExcessRequests: 2}]
  scorers:
    - {type: prefix-cache, weight: 5, capacityBlocks: 1000}
    - {type: queue-depth}
  picker: {type: weighted-random}
"""


def test_builtins_load() -> None:
    profiles = load_profiles()
    assert set(BUILTIN) <= set(profiles)
    assert [scorer.name for scorer, _ in profiles["token-aware"].scorers][:2] == ["prefix-cache", "prefill-wait"]
    assert not profiles["round-robin"].scorers


def test_yaml_profiles_extend_the_builtins(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(GOOD)
    profiles = load_profiles(tmp_path)
    mine = profiles["mine"]
    assert [w for _, w in mine.scorers] == [5, 1.0]
    assert mine.picker.name == "weighted-random"  # type: ignore[attr-defined]
    assert "token-aware" in profiles


def test_shipped_profiles_are_valid(repo_root: Path) -> None:
    files = sorted((repo_root / "configs" / "routing").glob("*.yaml"))
    assert files
    for path in files:
        load_profile_file(path)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("type: queue-depth", "type: telepathy"), "scorers: unknown type 'telepathy'; known:"),
        (("capacityBlocks: 1000", "capacityBlocks: 0"), "scorers 'prefix-cache': capacityBlocks"),
        (("maxExcessRequests: 2", "maxExcessReqs: 2"), "filters 'load-cap': maxExcessReqs: Extra inputs"),
        (("kind: RoutingProfile", "kind: Router"), "kind: Input should be 'RoutingProfile'"),
        (("type: weighted-random", "type: best"), "picker: unknown type 'best'"),
    ],
)
def test_invalid_profiles_name_file_and_field(tmp_path: Path, change: tuple[str, str], fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(RoutingProfileError) as info:
        load_profile_file(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def _draws(profiles: dict[str, Profile], name: str, n: int = 20) -> list[int]:
    picker = profiles[name].picker
    ctx = context()
    candidates = [candidate(f"r{i}") for i in range(8)]
    return [int(picker.pick(ctx, candidates, [0.0] * 8).replica_id[1:]) for _ in range(n)]


def test_seeded_profiles_repeat_their_draws_and_do_not_share_them() -> None:
    first = _draws(load_profiles(seed=3), "prefix-chars")
    assert _draws(load_profiles(seed=3), "prefix-chars") == first
    assert _draws(load_profiles(seed=4), "prefix-chars") != first
    profiles = load_profiles(seed=3)
    _draws(profiles, "least-request", 50)  # another profile drawing does not move this one's sequence
    assert _draws(profiles, "prefix-chars") == first


def test_llm_d_style_profile_uses_min_max_queue_scaling(repo_root: Path) -> None:
    profiles = load_profiles(repo_root / "configs" / "routing")
    queue = next(s for s, w in profiles["llm-d-style"].scorers if s.name == "queue-depth")  # type: ignore[attr-defined]
    ctx = context()
    short, mid, long = candidate("a", waiting=2), candidate("b", waiting=4), candidate("c", waiting=6)
    assert queue.score(ctx, [short, mid, long]) == [1.0, 0.5, 0.0]
