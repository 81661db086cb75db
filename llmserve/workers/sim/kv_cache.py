"""Paged KV blocks with a prefix cache, the way vLLM's block pool keeps them.

- A request holds a list of blocks; block j holds its tokens [j * block_size, (j + 1) * block_size).
- A full block is identified by a chained hash: hash(parent hash, its token ids, extra key such as a LoRA name),
  so equal hashes mean equal prefixes.
- Blocks nobody references go to the tail of a free queue but keep their hash: a later request with the same
  prefix takes them back (a hit). Allocation takes from the head, evicting the least recently freed cached
  block. A request frees its blocks last-first, so a prefix's tail is evicted before its head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

NO_HASH = -1


def block_hash(parent: int | None, tokens: Sequence[int], extra: str | None = None) -> int:
    """The chained hash of one full block (process-local, like vLLM's default)."""
    return hash((parent, tuple(tokens), extra))


class BlockPool:
    """`num_blocks` blocks: reference counts, a hash -> block map and an LRU free queue."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks
        self._hash = [NO_HASH] * num_blocks
        self._cached: dict[int, int] = {}
        # Insertion order = eviction order: the head is evicted first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks nobody references (cached ones included: they can be evicted)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by requests (vLLM's `kv_cache_usage_perc`)."""
        return 1.0 - len(self._free) / self.num_blocks

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def is_cached(self, block_hash_value: int) -> bool:
        return block_hash_value in self._cached

    def lookup(self, hashes: Iterable[int]) -> list[int]:
        """The blocks of the longest cached prefix of `hashes` (not yet referenced: call `touch`)."""
        if not self.enable_caching:
            return []
        hits = []
        for h in hashes:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def can_allocate(self, num_new: int, hits: Sequence[int] = ()) -> bool:
        """Whether `touch(hits)` followed by `allocate(num_new)` would succeed."""
        reclaimed = sum(1 for b in hits if self._ref[b] == 0)
        return num_new <= len(self._free) - reclaimed

    def touch(self, blocks: Iterable[int]) -> None:
        """Reference cache hits: a free cached block leaves the free queue."""
        for block in blocks:
            if self._ref[block] == 0:
                del self._free[block]
            self._ref[block] += 1

    def allocate(self, num: int) -> list[int]:
        """Take `num` blocks from the head of the free queue, evicting their cached contents."""
        if num > len(self._free):
            raise RuntimeError(f"cannot allocate {num} blocks, {len(self._free)} free")
        blocks = []
        for _ in range(num):
            block, _none = self._free.popitem(last=False)
            old = self._hash[block]
            if old != NO_HASH:
                del self._cached[old]
                self._hash[block] = NO_HASH
                self.evictions += 1
            self._ref[block] = 1
            blocks.append(block)
        return blocks

    def cache(self, block: int, block_hash_value: int) -> None:
        """Register a full block under its hash (first one wins when two hold the same content)."""
        if not self.enable_caching or self._hash[block] != NO_HASH or block_hash_value in self._cached:
            return
        self._hash[block] = block_hash_value
        self._cached[block_hash_value] = block

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference from each block, in the given order; unreferenced ones join the queue's tail."""
        for block in blocks:
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (blocks in use keep their contents but are no longer shared)."""
        self._cached.clear()
        self._hash = [NO_HASH] * self.num_blocks
