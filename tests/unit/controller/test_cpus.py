"""CPU placement of concurrent local replicas: own CPUs while there are enough, the least-shared ones after."""

from __future__ import annotations

import pytest

from controller.backends.cpus import CpuAllocator, cpu_list


def test_two_replicas_on_two_cpus_get_one_each() -> None:
    cpus = CpuAllocator({0, 1})
    assert cpus.claim("a") == (0,)  # like vLLM's automatic binding: every CPU but one
    assert cpus.claim("b") == (1,)  # not CPU 0 again, where a's model runner computes
    assert cpus.claim("c") == (0,)  # none free: the least shared, lowest first
    cpus.release("a")
    assert cpus.claim("d") == (0,)
    assert cpus.claims() == {"b": (1,), "c": (0,), "d": (0,)}


def test_a_cpu_request_sets_the_count() -> None:
    cpus = CpuAllocator(range(8))
    assert cpus.claim("a", 2) == (0, 1)
    assert cpus.claim("b", 2.5) == (2, 3, 4)  # rounded up
    assert cpus.claim("c") == (0, 1, 2, 3, 5, 6, 7)  # 7 wanted: the 3 free ones, then 4 shared ones
    assert cpus.claim("d", 64) == tuple(range(8))  # never more than there are


def test_claiming_again_replaces_the_claim() -> None:
    cpus = CpuAllocator({0, 1, 2, 3})
    assert cpus.claim("a", 1) == (0,)
    assert cpus.claim("a", 1) == (0,)  # its own claim does not count against it
    assert cpus.claims() == {"a": (0,)}


def test_one_cpu_machine_and_no_cpus() -> None:
    assert CpuAllocator({5}).claim("a") == (5,)
    with pytest.raises(ValueError, match="no CPUs"):
        CpuAllocator(())


def test_placement_keeps_processes_off_other_replicas_cpus() -> None:
    cpus = CpuAllocator({0, 1})
    assert cpus.placement() == (0, 1)  # nothing pinned: everywhere
    cpus.claim("a")
    assert cpus.placement("a") == (0, 1)  # a's own front end may use every CPU
    assert cpus.placement() == (1,)  # anything else (a pooled process importing) stays off CPU 0
    cpus.claim("b")
    assert cpus.placement("b") == (1,)
    assert cpus.placement() == (0, 1)  # every CPU taken: no restriction is better than none at all


def test_cpu_list_syntax() -> None:
    assert cpu_list([0, 2, 3, 4, 5, 9]) == "0,2-5,9"
    assert cpu_list([1]) == "1"
    assert cpu_list([]) == ""
