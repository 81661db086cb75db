"""Where a prompt's prefix is probably cached: chained block hashes and a bounded per-replica index.

A prompt's token ids are cut into blocks of the engine's block size (only full blocks, like vLLM's prefix cache);
block i's hash covers blocks 0..i, so one hash names a whole prefix. The index learns from routing decisions
(what we sent where), keeps the most recently used `capacity` blocks per replica, and answers, for a new prompt,
how many leading blocks each replica probably holds. Lookup walks the prompt's blocks once, whatever the number
of replicas.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(tokens: array[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of `tokens` (an array of uint32 token ids)."""
    data = tokens.tobytes()
    step = block_size * tokens.itemsize
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(data) - step + 1, step):
        previous = hash((previous, data[start : start + step]))
        hashes.append(previous)
    return hashes


class PrefixIndex:
    def __init__(self, capacity_per_replica: int = 65536) -> None:
        self.capacity = capacity_per_replica
        self._holders: dict[int, set[str]] = {}  # block hash -> replicas believed to hold it
        self._lru: dict[str, OrderedDict[int, None]] = {}  # replica -> its blocks, least recent first

    def matched_blocks(self, hashes: Sequence[int], replicas: Sequence[str]) -> dict[str, int]:
        """For each replica, how many leading blocks of the prompt it holds."""
        matched = dict.fromkeys(replicas, 0)
        candidates = set(replicas)
        for depth, block in enumerate(hashes):
            holders = self._holders.get(block)
            keep = candidates & holders if holders else set()
            if len(keep) != len(candidates):
                for replica in candidates - keep:
                    matched[replica] = depth
                candidates = keep
                if not candidates:
                    return matched
        for replica in candidates:
            matched[replica] = len(hashes)
        return matched

    def record(self, replica: str, hashes: Sequence[int], capacity: int | None = None) -> None:
        """`replica` now holds these blocks (it was just sent the prompt)."""
        lru = self._lru.get(replica)
        if lru is None:
            lru = self._lru[replica] = OrderedDict()
        for block in hashes:
            if block in lru:
                lru.move_to_end(block)
            else:
                lru[block] = None
                self._holders.setdefault(block, set()).add(replica)
        limit = capacity or self.capacity
        while len(lru) > limit:
            evicted, _ = lru.popitem(last=False)
            self._drop(evicted, replica)

    def forget(self, replica: str) -> None:
        for block in self._lru.pop(replica, OrderedDict()):
            self._drop(block, replica)

    def replicas(self) -> list[str]:
        return list(self._lru)

    def size(self) -> int:
        return sum(len(lru) for lru in self._lru.values())

    def _drop(self, block: int, replica: str) -> None:
        holders = self._holders.get(block)
        if holders is not None:
            holders.discard(replica)
            if not holders:
                del self._holders[block]
