from __future__ import annotations

from pathlib import Path

import pytest

from gateway.routing.profiles import BUILTIN, RoutingProfileError, load_profile_file, load_profiles

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
    assert profiles["token-aware"].needs_tokens
    assert not profiles["round-robin"].needs_tokens


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
