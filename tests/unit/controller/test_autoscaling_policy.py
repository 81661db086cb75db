"""The KPA-style policy over scripted load traces, with time passed in (no clock, no sleeps)."""

from __future__ import annotations

import itertools

import pytest

from controller.autoscaling.policy import AutoscalingConfig, Decision, PolicyState, decide

CONFIG = AutoscalingConfig(
    target=4,
    min_replicas=0,
    max_replicas=10,
    stable_window_s=60,
    panic_window_s=6,
    panic_threshold=2,
    max_scale_up_rate=1000,
    max_scale_down_rate=2,
    scale_to_zero_grace_s=30,
)


class Trace:
    """Feeds the policy one sample per second; `ready` follows `desired` after `lag` seconds (replica start)."""

    def __init__(self, config: AutoscalingConfig = CONFIG, ready: int = 0, lag: int = 0) -> None:
        self.config = config
        self.state = PolicyState(desired=ready)
        self.ready = ready
        self.lag = lag
        self.now = 0.0
        self.history: list[tuple[int, int]] = []  # desired over time
        self.decisions: list[Decision] = []

    def run(self, seconds: int, demand: float) -> Decision:
        decision = None
        for _ in range(seconds):
            self.now += 1
            decision, self.state = decide(self.config, self.now, demand, self.ready, self.state)
            self.history.append((int(self.now), decision.desired))
            self.decisions.append(decision)
            if self.lag == 0 or (len(self.history) > self.lag and self.history[-1 - self.lag][1] == decision.desired):
                self.ready = decision.desired
        assert decision is not None
        return decision


def test_steady_load_settles_on_demand_over_target() -> None:
    trace = Trace(ready=1)
    decision = trace.run(120, demand=20)
    assert decision.desired == 5  # 20 in flight / 4 per replica
    assert decision.mode in ("stable", "panic")
    trace.run(70, demand=20)
    assert trace.decisions[-1].mode == "stable"
    assert trace.decisions[-1].desired == 5


def test_burst_panics_and_scales_at_once() -> None:
    trace = Trace(ready=2)
    trace.run(60, demand=8)  # steady: 2 replicas
    assert trace.decisions[-1].desired == 2
    burst = trace.run(1, demand=80)  # the 6 s average jumps to 20 >= 2 x (2 replicas x 4 each)
    assert burst.mode == "panic"
    assert burst.desired == 5  # at once, from the panic average (the stable one still says 2)
    trace.run(5, demand=80)
    assert trace.decisions[-1].desired == 10  # 80 / 4 = 20, capped at max_replicas


def test_no_scale_down_while_panicking_then_decay() -> None:
    trace = Trace(ready=2)
    trace.run(10, demand=40)  # panic to 10
    peak = trace.decisions[-1].desired
    trace.run(30, demand=2)  # load gone, but still inside the panic period
    assert trace.decisions[-1].mode == "panic"
    assert trace.decisions[-1].desired == peak
    trace.run(120, demand=2)  # the panic period ends; the stable average decays; scale-down rate-limited
    downs = [d for _, d in trace.history[-120:]]
    assert downs[-1] == 1
    assert all(later >= earlier // 2 for earlier, later in itertools.pairwise(downs))


def test_scale_down_rate_is_limited() -> None:
    trace = Trace(ready=8)
    decision = trace.run(1, demand=0.0)
    assert decision.desired >= 4  # at most halve per decision (max_scale_down_rate 2)


def test_idle_goes_to_zero_only_after_the_grace_period() -> None:
    trace = Trace(AutoscalingConfig(target=4, max_replicas=10, scale_to_zero_grace_s=90), ready=1)
    trace.run(5, demand=3)
    trace.run(61, demand=0)  # the stable window has no demand left...
    assert trace.decisions[-1].desired == 1  # ...but the grace period (90 s since the last request) runs
    trace.run(30, demand=0)
    assert trace.decisions[-1].desired == 0
    assert trace.decisions[-1].mode == "idle"


def test_idle_waits_for_the_stable_window_when_grace_is_shorter() -> None:
    trace = Trace(ready=1)  # grace 30 s, window 60 s
    trace.run(5, demand=3)
    trace.run(40, demand=0)
    assert trace.decisions[-1].desired == 1  # some demand still inside the 60 s window
    trace.run(25, demand=0)
    assert trace.decisions[-1].desired == 0


def test_a_held_request_activates_from_zero() -> None:
    trace = Trace(ready=0)
    assert trace.run(3, demand=0).desired == 0
    assert trace.run(1, demand=1).desired == 1  # the activator holds a request: one replica now


def test_min_and_max_bounds() -> None:
    bounded = AutoscalingConfig(target=1, min_replicas=2, max_replicas=3, stable_window_s=10, panic_window_s=2)
    trace = Trace(bounded, ready=2)
    assert trace.run(20, demand=0).desired == 2
    assert trace.run(20, demand=100).desired == 3


def test_scale_up_rate_is_limited() -> None:
    slow = AutoscalingConfig(target=1, max_replicas=100, stable_window_s=10, panic_window_s=2, max_scale_up_rate=2)
    trace = Trace(slow, ready=2)
    assert trace.run(1, demand=50).desired == 4  # at most double the ready replicas per decision


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0}, "target"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"panic_window_s": 100, "stable_window_s": 60}, "panic window"),
    ],
)
def test_invalid_configs(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoscalingConfig(**kwargs)  # type: ignore[arg-type]
