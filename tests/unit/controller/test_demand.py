"""Demand summed over gateways: stale ones dropped, old reports ignored, arrivals that only grow, and the
autoscaler's decision the same whether the load comes through one gateway or is split over two."""

from __future__ import annotations

from controller.autoscaling.policy import AutoscalingConfig, PolicyState, decide
from controller.demand import DemandAggregator
from llmserve.endpoints import Demand


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reports_of_live_gateways_are_summed() -> None:
    clock = Clock()
    agg = DemandAggregator(stale_after_s=5, clock=clock)
    agg.report("a", 1, {"chat": Demand(in_flight=2, in_flight_tokens=200, held=1, arrived=3)})
    agg.report("b", 1, {"chat": Demand(in_flight=3, in_flight_tokens=100, arrived=4)})
    assert agg.demand("chat") == Demand(in_flight=5, in_flight_tokens=300, held=1, held_tokens=0, arrived=7)
    clock.now = 6  # b goes quiet...
    agg.report("a", 2, {"chat": Demand(in_flight=1, arrived=5)})
    clock.now = 10.5
    seen = agg.demand("chat")
    assert seen.in_flight == 1  # ...and is dropped; a still counts
    assert seen.arrived == 9  # but what it saw arrive stays counted
    assert [g["id"] for g in agg.gateways()] == ["a"]


def test_an_older_report_is_ignored() -> None:
    agg = DemandAggregator(clock=Clock())
    assert agg.report("a", 5, {"chat": Demand(in_flight=4, arrived=10)})
    assert not agg.report("a", 4, {"chat": Demand(in_flight=0, arrived=8)})
    assert agg.demand("chat").in_flight == 4


def test_a_restarted_gateway_does_not_take_arrivals_back() -> None:
    agg = DemandAggregator(clock=Clock())
    agg.report("gw-1", 1, {"chat": Demand(arrived=10)})
    agg.report("gw-2", 1, {"chat": Demand(arrived=2)})  # the same host restarted: a new id, its counter from 0
    assert agg.demand("chat").arrived == 12


def test_the_decision_is_the_same_for_one_gateway_and_for_two() -> None:
    config = AutoscalingConfig(target=2, min_replicas=1, max_replicas=10, stable_window_s=6, panic_window_s=2)
    loads = [(1, 3), (4, 4), (6, 7), (2, 9), (0, 1), (0, 0)]  # (through a, through b) per tick
    one, two = DemandAggregator(clock=Clock()), DemandAggregator(clock=Clock())
    state_one = state_two = PolicyState()
    for tick, (a, b) in enumerate(loads):
        one.report("only", tick + 1, {"chat": Demand(in_flight=a + b)})
        two.report("a", tick + 1, {"chat": Demand(in_flight=a)})
        two.report("b", tick + 1, {"chat": Demand(in_flight=b)})
        d1, state_one = decide(config, float(tick), float(one.demand("chat").in_flight), 2, state_one)
        d2, state_two = decide(config, float(tick), float(two.demand("chat").in_flight), 2, state_two)
        assert d1 == d2
