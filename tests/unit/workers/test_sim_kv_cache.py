"""The simulator's block pool: reference counts, prefix lookup by chained hashes, LRU eviction."""

from __future__ import annotations

import pytest

from llmserve.workers.sim.kv_cache import BlockPool, block_hash


def chain(blocks: list[list[int]], extra: str | None = None) -> list[int]:
    hashes: list[int] = []
    for tokens in blocks:
        hashes.append(block_hash(hashes[-1] if hashes else None, tokens, extra))
    return hashes


def test_hashes_are_chained_so_equal_hashes_mean_equal_prefixes() -> None:
    one, two = chain([[1, 2], [3, 4]]), chain([[9, 9], [3, 4]])
    assert one[1] != two[1]  # same block, different prefix
    assert chain([[1, 2]], extra="lora-a") != chain([[1, 2]])


def test_lookup_returns_the_longest_cached_prefix() -> None:
    pool = BlockPool(4)
    hashes = chain([[1], [2], [3]])
    blocks = pool.allocate(3)
    pool.cache(blocks[0], hashes[0])
    pool.cache(blocks[2], hashes[2])
    assert pool.lookup(hashes) == [blocks[0]]  # a gap ends the prefix


def test_touch_takes_a_free_cached_block_back_and_usage_counts_referenced_blocks() -> None:
    pool = BlockPool(4)
    [block] = pool.allocate(1)
    h = chain([[1]])[0]
    pool.cache(block, h)
    assert pool.usage == 0.25
    pool.free([block])
    assert pool.usage == 0.0
    assert pool.is_cached(h)
    assert pool.can_allocate(3, [block])
    assert not pool.can_allocate(4, [block])
    pool.touch([block])
    pool.touch([block])
    assert pool.ref_count(block) == 2
    assert pool.num_free == 3
    pool.free([block])
    assert pool.num_free == 3  # still referenced once


def test_allocation_evicts_from_the_head_of_the_free_queue() -> None:
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    hashes = chain([[1], [2], [3]])
    for block, h in zip(blocks, hashes, strict=True):
        pool.cache(block, h)
    pool.free(reversed(blocks))  # a request frees its tail first
    [taken] = pool.allocate(1)
    assert taken == blocks[2]
    assert [pool.is_cached(h) for h in hashes] == [True, True, False]
    assert pool.evictions == 1
    with pytest.raises(RuntimeError):
        pool.allocate(3)


def test_first_block_with_a_hash_keeps_it_and_caching_can_be_off() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    h = chain([[5]])[0]
    pool.cache(a, h)
    pool.cache(b, h)
    assert pool.lookup([h]) == [a]
    assert pool.num_cached == 1
    pool.reset_prefix_cache()
    assert pool.lookup([h]) == []
    off = BlockPool(2, enable_caching=False)
    [c] = off.allocate(1)
    off.cache(c, h)
    assert off.lookup([h]) == []
