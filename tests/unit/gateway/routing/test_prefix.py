from __future__ import annotations

from array import array

from gateway.routing.prefix import PrefixIndex, block_hashes


def test_block_hashes_chain_prefixes() -> None:
    a = block_hashes(array("I", range(10)), 4)
    b = block_hashes(array("I", [*range(8), 99, 98, 97, 96]), 4)
    assert len(a) == 2  # only full blocks
    assert len(b) == 3
    assert a[:2] == b[:2]
    c = block_hashes(array("I", [1, *range(1, 12)]), 4)
    assert c[0] != a[0]
    assert c[1] != a[1]


def test_matched_blocks() -> None:
    index = PrefixIndex()
    doc = block_hashes(array("I", range(40)), 4)  # 10 blocks
    index.record("r1", doc)
    index.record("r2", doc[:3])
    other = block_hashes(array("I", range(100, 140)), 4)
    assert index.matched_blocks(doc, ["r1", "r2", "r3"]) == {"r1": 10, "r2": 3, "r3": 0}
    assert index.matched_blocks(other, ["r1", "r2"]) == {"r1": 0, "r2": 0}
    longer = block_hashes(array("I", [*range(40), *range(500, 520)]), 4)
    assert index.matched_blocks(longer, ["r1"]) == {"r1": 10}


def test_capacity_is_bounded_and_lru() -> None:
    index = PrefixIndex(capacity_per_replica=5)
    first = block_hashes(array("I", range(20)), 4)  # 5 blocks
    second = block_hashes(array("I", range(1000, 1012)), 4)  # 3 blocks
    index.record("r", first)
    index.record("r", second)
    assert index.size() == 5
    assert index.matched_blocks(second, ["r"]) == {"r": 3}
    assert index.matched_blocks(first, ["r"]) == {"r": 0}  # its oldest blocks were evicted


def test_forget() -> None:
    index = PrefixIndex()
    hashes = block_hashes(array("I", range(8)), 4)
    index.record("gone", hashes)
    index.forget("gone")
    assert index.size() == 0
    assert index.matched_blocks(hashes, ["gone"]) == {"gone": 0}
