from __future__ import annotations

from gateway.routing.prefix import PrefixIndex


def chain(*parts: int) -> list[int]:
    """Chained hashes of chunks named by small ints (as prompt.py builds them)."""
    out, previous = [], 0
    for part in parts:
        previous = hash((previous, part))
        out.append(previous)
    return out


def test_matched_blocks() -> None:
    index = PrefixIndex()
    doc = chain(*range(10))
    index.record("r1", doc)
    index.record("r2", doc[:3])
    other = chain(*range(100, 110))
    assert index.matched_blocks(doc, ["r1", "r2", "r3"]) == {"r1": 10, "r2": 3, "r3": 0}
    assert index.matched_blocks(other, ["r1", "r2"]) == {"r1": 0, "r2": 0}
    longer = chain(*range(10), 500, 501)
    assert index.matched_blocks(longer, ["r1"]) == {"r1": 10}
    for depth in range(1, 10):
        assert index.matched_blocks(chain(*range(depth), 999), ["r1"]) == {"r1": depth}
    assert index.matched_blocks([], ["r1"]) == {"r1": 0}


def test_capacity_is_bounded_and_evicts_tails_first() -> None:
    index = PrefixIndex(capacity_per_replica=5)
    first = chain(*range(5))  # three messages: 2, 2 and 1 chunks
    second = chain(*range(1000, 1003))
    index.record("r", first, segments=[2, 4])
    index.record("r", second)
    assert index.size() == 5
    assert index.matched_blocks(second, ["r"]) == {"r": 3}
    assert index.matched_blocks(first, ["r"]) == {"r": 2}  # its last two messages went, its first stays usable


def test_a_shared_system_prompt_outlives_the_conversations_that_used_it() -> None:
    index = PrefixIndex(capacity_per_replica=8)
    system = list(range(4))  # one message of 4 chunks, then each conversation's own message
    index.record("r", chain(*system, 10, 11), segments=[4])
    index.record("r", chain(*system, 20, 21), segments=[4])
    index.record("r", chain(*system, 30, 31, 32), segments=[4])  # 4 + 2 + 2 + 3 = 11: the oldest turns go
    assert index.size() <= 8
    assert index.matched_blocks(chain(*system, 10, 11), ["r"]) == {"r": 4}
    assert index.matched_blocks(chain(*system, 20, 21), ["r"]) == {"r": 4}
    assert index.matched_blocks(chain(*system, 30, 31, 32), ["r"]) == {"r": 7}


def test_a_segment_sent_again_is_recent_again() -> None:
    index = PrefixIndex(capacity_per_replica=6)
    hot, cold = chain(1, 2, 3), chain(7, 8, 9)
    index.record("r", hot)
    index.record("r", cold)
    index.record("r", hot)  # moved to the end: the cold document is now the oldest
    index.record("r", chain(5))
    assert index.matched_blocks(hot, ["r"]) == {"r": 3}
    assert index.matched_blocks(cold, ["r"]) == {"r": 0}


def test_a_longer_prompt_takes_over_the_chunks_it_shares() -> None:
    index = PrefixIndex(capacity_per_replica=5)
    short, long = chain(1, 2), chain(1, 2, 3, 4)  # one segment each (a completion prompt that grew)
    index.record("r", short)
    index.record("r", long)
    index.record("r", chain(9))
    index.record("r", long)  # the short prompt's segment is now the oldest, but its chunks belong to the long one
    index.record("r", chain(8))
    assert index.matched_blocks(long, ["r"]) == {"r": 4}
    assert index.matched_blocks(short, ["r"]) == {"r": 2}
    assert index.matched_blocks(chain(9), ["r"]) == {"r": 0}


def test_forget() -> None:
    index = PrefixIndex()
    hashes = chain(1, 2)
    index.record("gone", hashes)
    index.forget("gone")
    assert index.size() == 0
    assert index.matched_blocks(hashes, ["gone"]) == {"gone": 0}
