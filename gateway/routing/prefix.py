"""Where a prompt's prefix is probably cached: a bounded per-replica index of chained prompt-chunk hashes.

A prompt is a list of chained hashes cut into segments, one per message (prompt.py: chunk i's hash names chunks
0..i). The index learns from routing decisions (what we sent where) and keeps about the `capacity` most recently
sent chunks per replica.

Per replica, the index keeps its segments in least-recently-sent order, and every chunk points to the segment that
last sent it. Sending a segment again moves it to the end: one step, however many chunks it has (a long RAG
document sent again costs as much to record as a short question). Past capacity, the oldest segment goes, with its
chunks that no later segment sent. A prompt's segments are recorded last to first, so a prefix is always at least
as recent as what follows it, and the index drops a prompt's tail before its head, the order vLLM's prefix cache
evicts a freed request's blocks in. So what a replica holds of a prompt is always a prefix of it, found by
bisection: a lookup costs O(replicas x log(chunks)).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class _Replica:
    __slots__ = ("held", "segments")

    def __init__(self) -> None:
        self.held: dict[int, int] = {}  # chunk hash -> the segment (its last chunk's hash) that last sent it
        self.segments: OrderedDict[int, Sequence[int]] = OrderedDict()  # segment -> its chunks, least recent first


class PrefixIndex:
    def __init__(self, capacity_per_replica: int = 65536) -> None:
        self.capacity = capacity_per_replica
        self._replicas: dict[str, _Replica] = {}

    def matched_blocks(self, hashes: Sequence[int], replicas: Sequence[str]) -> dict[str, int]:
        """For each replica, how many leading chunks of the prompt it holds."""
        count = len(hashes)
        matched: dict[str, int] = {}
        for replica in replicas:
            state = self._replicas.get(replica)
            held = state.held if state is not None else None
            if not held or not count or hashes[0] not in held:
                matched[replica] = 0
            elif hashes[-1] in held:
                matched[replica] = count
            else:  # hashes[low - 1] is held, hashes[high] is not
                low, high = 1, count - 1
                while low < high:
                    middle = (low + high) // 2
                    if hashes[middle] in held:
                        low = middle + 1
                    else:
                        high = middle
                matched[replica] = low
        return matched

    def record(
        self, replica: str, hashes: Sequence[int], capacity: int | None = None, segments: Sequence[int] = ()
    ) -> None:
        """`replica` now holds these chunks (it was just sent the prompt; `segments`: where each message's chunks
        end, default one segment); keeps about `capacity` chunks there."""
        limit = capacity or self.capacity
        if len(hashes) > limit:
            hashes = hashes[:limit]
        if not hashes:
            return
        state = self._replicas.get(replica)
        if state is None:
            state = self._replicas[replica] = _Replica()
        held, order = state.held, state.segments
        ends = [end for end in segments if end < len(hashes)] + [len(hashes)]
        for index in range(len(ends) - 1, -1, -1):  # last segment first: the head ends up the most recent
            start = ends[index - 1] if index else 0
            if start >= ends[index]:
                continue
            key = hashes[ends[index] - 1]
            if held.get(hashes[start]) == key:  # sent before, and no later segment took its chunks: just move it
                order.move_to_end(key)
                continue
            blocks = hashes[start : ends[index]]
            for block in blocks:
                held[block] = key
            order[key] = blocks
            order.move_to_end(key)
        while len(held) > limit or len(order) > limit:
            key, blocks = order.popitem(last=False)
            for block in blocks:
                if held.get(block) == key:
                    del held[block]

    def forget(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def replicas(self) -> list[str]:
        return list(self._replicas)

    def size(self) -> int:
        return sum(len(state.held) for state in self._replicas.values())
