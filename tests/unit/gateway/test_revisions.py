"""The per-request traffic split: shares over many requests (seeded), tag pins, sticky sessions, fail-open."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.revisions import RevisionPicker, session_point
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.errors import ServingError
from llmserve.traffic import LATEST_TAG, PREV_TAG, TrafficTarget

CANARY = (TrafficTarget("chat-00002", 20, LATEST_TAG), TrafficTarget("chat-00001", 80, PREV_TAG))


@pytest.mark.parametrize("seed", range(5))
def test_twenty_percent_of_2000_requests_reach_the_canary(seed: int) -> None:
    picker = RevisionPicker(random.Random(seed))
    counts = Counter(picker.pick("chat", CANARY) for _ in range(2000))
    assert set(counts) == {"chat-00001", "chat-00002"}
    assert abs(counts["chat-00002"] / 2000 - 0.20) <= 0.03


def test_a_single_target_and_a_merged_split_get_everything() -> None:
    picker = RevisionPicker(random.Random(1))
    assert {picker.pick("chat", (TrafficTarget("v1", 100, LATEST_TAG),)) for _ in range(100)} == {"v1"}
    never_ready = (TrafficTarget("v1", 20, LATEST_TAG), TrafficTarget("v1", 80, PREV_TAG))
    assert {picker.pick("chat", never_ready) for _ in range(100)} == {"v1"}
    rolled_back = (TrafficTarget("v2", 0, LATEST_TAG), TrafficTarget("v1", 100, PREV_TAG))
    assert {picker.pick("chat", rolled_back) for _ in range(100)} == {"v1"}


@pytest.mark.parametrize(
    ("pin", "expected"), [("latest", "chat-00002"), ("prev", "chat-00001"), ("chat-00001", "chat-00001")]
)
def test_a_tag_pins_every_request(pin: str, expected: str) -> None:
    picker = RevisionPicker(random.Random(2))
    assert {picker.pick("chat", CANARY, pin=pin, session=f"s{i}") for i in range(200)} == {expected}


def test_a_canary_at_zero_is_reachable_by_tag_and_name() -> None:
    picker = RevisionPicker(random.Random(3))
    pinned_canary = (TrafficTarget("chat-00002", 0, LATEST_TAG), TrafficTarget("chat-00001", 100, PREV_TAG))
    assert picker.pick("chat", pinned_canary, pin="latest") == "chat-00002"
    assert picker.pick("chat", pinned_canary, pin="chat-00002") == "chat-00002"
    # a revision outside the split that still has replicas (draining after a promotion)
    promoted = (TrafficTarget("chat-00002", 100, LATEST_TAG),)
    assert picker.pick("chat", promoted, pin="chat-00001", known={"chat-00001"}) == "chat-00001"


def test_unknown_pins_are_404s_that_say_what_exists() -> None:
    picker = RevisionPicker(random.Random(4))
    promoted = (TrafficTarget("chat-00002", 100, LATEST_TAG),)
    with pytest.raises(ServingError) as info:
        picker.pick("chat", promoted, pin="prev")
    assert (info.value.status, info.value.code) == (404, "revision_not_found")
    assert "no canary is running" in info.value.message
    with pytest.raises(ServingError) as info:
        picker.pick("chat", promoted, pin="chat-00009", known={"chat-00001"})
    assert info.value.status == 404
    assert "chat-00001, chat-00002" in info.value.message


def test_a_session_never_flips_between_revisions() -> None:
    picker = RevisionPicker(random.Random(5))
    placed = {}
    for turn in range(20):
        for i in range(300):
            revision = picker.pick("chat", CANARY, session=f"session-{i}")
            assert placed.setdefault(i, revision) == revision, f"session {i} flipped at turn {turn}"
    share = Counter(placed.values())["chat-00002"] / len(placed)
    assert 0.14 <= share <= 0.26


def test_sessions_are_placed_the_same_in_every_gateway_process() -> None:
    first = RevisionPicker(random.Random(6))
    second = RevisionPicker(random.Random(7))
    for i in range(100):
        assert first.pick("chat", CANARY, session=str(i)) == second.pick("chat", CANARY, session=str(i))
    assert session_point("chat", "x") != session_point("other", "x")  # services are placed independently


def test_a_growing_canary_only_moves_sessions_towards_it() -> None:
    picker = RevisionPicker(random.Random(8))

    def placement(percent: int) -> dict[int, str]:
        split = (TrafficTarget("new", percent, LATEST_TAG), TrafficTarget("old", 100 - percent, PREV_TAG))
        return {i: picker.pick("chat", split, session=f"u{i}") for i in range(1000)}

    before, after = placement(20), placement(50)
    moved = [i for i in before if before[i] != after[i]]
    assert moved  # some sessions move...
    assert all((before[i], after[i]) == ("old", "new") for i in moved)  # ...and only onto the canary


def test_a_revision_without_ready_replicas_is_skipped_while_another_has_some() -> None:
    picker = RevisionPicker(random.Random(9))
    counts = Counter(picker.pick("chat", CANARY, serving=lambda r: r != "chat-00001") for _ in range(200))
    assert counts == {"chat-00002": 200}
    # nothing ready anywhere: the drawn revision (its activator waits for it)
    counts = Counter(picker.pick("chat", CANARY, serving=lambda r: False) for _ in range(2000))
    assert abs(counts["chat-00002"] / 2000 - 0.20) <= 0.03
    # a pin never moves
    assert picker.pick("chat", CANARY, pin="prev", serving=lambda r: r != "chat-00001") == "chat-00001"


def test_an_empty_split_is_a_clear_503() -> None:
    with pytest.raises(ServingError) as info:
        RevisionPicker().pick("chat", ())
    assert info.value.status == 503


def test_narrow_keeps_the_endpoints_of_the_revision_a_request_goes_to() -> None:
    service = ServiceInfo(name="chat", model_name="chat", traffic=CANARY)
    old = [Endpoint("chat", f"chat-00001-{i}", f"http://o{i}:1", revision="chat-00001") for i in range(2)]
    new = [Endpoint("chat", "chat-00002-0", "http://n:1", revision="chat-00002")]
    picker = RevisionPicker(random.Random(3))
    counts: Counter[str] = Counter()
    for _ in range(1000):
        revision, endpoints = picker.narrow(service, [*old, *new], pin=None, session=None)
        assert {e.revision for e in endpoints} == {revision}
        counts[revision] += 1
    assert abs(counts["chat-00002"] / 1000 - 0.2) < 0.05
    assert picker.narrow(service, [*old, *new], pin="latest", session=None) == ("chat-00002", new)
    # The canary has no ready replica: everything goes to the revision that has (fail-open), at no extra cost.
    assert picker.narrow(service, old, pin=None, session=None) == ("chat-00001", old)
    # Pinned to a revision with none ready: no endpoints (the request waits for them).
    assert picker.narrow(service, old, pin="latest", session=None) == ("chat-00002", ())
    # No split known (an older controller): every endpoint.
    legacy = ServiceInfo(name="chat", model_name="chat")
    assert picker.narrow(legacy, [*old, *new], pin="latest", session=None) == ("", [*old, *new])
