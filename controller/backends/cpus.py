"""Which CPUs the compute threads of each local replica are pinned to.

vLLM's CPU build pins its model-runner threads itself: by default to every allowed CPU but the last (kept for the
API server and engine core). Two replicas on one machine then pin to the *same* CPUs: on the 2-core machine this
project runs on, both workers share CPU 0 while CPU 1 serves only the front ends, and a second replica started
beside a busy one was starved for minutes. The local backend therefore gives each concurrent replica its own CPUs
when there are enough, and the least-shared ones when there are not. Pure bookkeeping: no processes, no clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable


class CpuAllocator:
    """`cpus`: the CPUs replicas may use (default: this process's affinity)."""

    def __init__(self, cpus: Iterable[int]) -> None:
        self.cpus = sorted(set(cpus))
        if not self.cpus:
            raise ValueError("no CPUs to allocate")
        self._claims: dict[str, tuple[int, ...]] = {}

    def default_want(self) -> int:
        """What vLLM's automatic binding takes for one replica: every CPU but one (one on a 1-CPU machine)."""
        return max(1, len(self.cpus) - 1)

    def claim(self, owner: str, want: float | None = None) -> tuple[int, ...]:
        """CPUs for `owner`'s compute threads: `want` of them (rounded up; default `default_want()`), free ones
        first, then the least-claimed ones; lowest numbers first among equals."""
        count = min(len(self.cpus), max(1, math.ceil(want) if want else self.default_want()))
        self.release(owner)
        use = Counter(cpu for cpus in self._claims.values() for cpu in cpus)
        chosen = sorted(sorted(self.cpus, key=lambda cpu: (use[cpu], cpu))[:count])
        self._claims[owner] = tuple(chosen)
        return self._claims[owner]

    def placement(self, owner: str | None = None) -> tuple[int, ...]:
        """The CPUs `owner`'s processes may run on: those no *other* owner's compute threads are pinned to, or all
        of them when there are none. A process started next to a pinned, busy model runner stays off its CPU:
        on this machine's kernel even `import torch` (MKL probes the cores by pinning itself to each in turn)
        waited minutes for a CPU that a busy runner held."""
        taken = {cpu for other, cpus in self._claims.items() if other != owner for cpu in cpus}
        return tuple(cpu for cpu in self.cpus if cpu not in taken) or tuple(self.cpus)

    def reclaim(self, owner: str, cpus: Iterable[int]) -> None:
        """Record a claim made before (a replica adopted from a previous controller keeps its CPUs)."""
        self._claims[owner] = tuple(sorted(cpu for cpu in set(cpus) if cpu in self.cpus))

    def release(self, owner: str) -> None:
        self._claims.pop(owner, None)

    def claims(self) -> dict[str, tuple[int, ...]]:
        return dict(self._claims)


def cpu_list(cpus: Iterable[int]) -> str:
    """The list syntax "0,2-5" (for [0, 2, 3, 4, 5]) of taskset, cpusets and VLLM_CPU_OMP_THREADS_BIND."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def parse_cpu_list(text: str) -> list[int]:
    """The CPUs of a list "0,2-5" (cpu_list's inverse); malformed parts are ignored."""
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            cpus.extend(range(int(first), int(last or first) + 1))
    return cpus
