"""A KPA-style autoscaling policy as a pure function: (config, now, demand, ready, state) -> (decision, state).

Knative's pod autoscaler, reduced to its rules:
- demand is a per-service load (requests in flight, or tokens in flight) sampled every tick; capacity is
  `target` of it per replica;
- the **stable** window (default 60 s) average sets the replicas; the **panic** window (6 s) average reacts to
  bursts: when it reaches `panic_threshold` times the ready capacity, the policy panics: it scales to the panic
  estimate and does not scale down until a stable window has passed without panic;
- scale-up and scale-down rates are bounded (`max_scale_up_rate`, `max_scale_down_rate`, relative to ready);
- with `min_replicas: 0`, a service with no demand for `scale_to_zero_grace_s` after its stable window went quiet
  scales to zero; any demand (a request held by the activator) asks for at least one replica at once;
- the result is clamped to [min_replicas, max_replicas].
No clock, no I/O: the caller passes `now`, so tests script whole load traces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

Mode = Literal["stable", "panic", "idle"]


@dataclass(frozen=True)
class AutoscalingConfig:
    target: float = 8.0  # demand one replica should carry (e.g. 8 concurrent requests)
    min_replicas: int = 0
    max_replicas: int = 1
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0  # panic when panic-window demand >= this x ready capacity
    max_scale_up_rate: float = 1000.0  # at most ready x this per decision
    max_scale_down_rate: float = 2.0  # at least ready / this per decision
    scale_to_zero_grace_s: float = 30.0

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValueError("target must be positive")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic window <= stable window")


@dataclass(frozen=True)
class PolicyState:
    samples: tuple[tuple[float, float], ...] = ()  # (time, demand), oldest first, within the stable window
    desired: int = 0
    panic_until: float | None = None
    last_active: float | None = None  # last time any demand was seen


@dataclass(frozen=True)
class Decision:
    desired: int
    mode: Mode
    stable_average: float
    panic_average: float
    reason: str = ""
    detail: dict[str, float] = field(default_factory=dict)


def _average(samples: tuple[tuple[float, float], ...], since: float) -> float:
    values = [value for at, value in samples if at >= since]
    return sum(values) / len(values) if values else 0.0


def decide(
    config: AutoscalingConfig, now: float, demand: float, ready: int, state: PolicyState
) -> tuple[Decision, PolicyState]:
    samples = (*(s for s in state.samples if s[0] > now - config.stable_window_s), (now, demand))
    last_active = now if demand > 0 else state.last_active
    stable = _average(samples, now - config.stable_window_s)
    panic = _average(samples, now - config.panic_window_s)
    want_stable = math.ceil(stable / config.target - 1e-9)
    want_panic = math.ceil(panic / config.target - 1e-9)

    panic_until = state.panic_until
    if ready > 0 and panic >= config.panic_threshold * ready * config.target:
        panic_until = now + config.stable_window_s
    panicking = panic_until is not None and now < panic_until
    if not panicking:
        panic_until = None

    mode: Mode = "stable"
    if panicking:
        mode = "panic"
        desired = max(want_panic, state.desired, ready)  # never scale down while panicking
        reason = f"panic: {panic:.1f} in the last {config.panic_window_s:g} s"
    else:
        desired = want_stable
        reason = f"stable: {stable:.1f} over {config.stable_window_s:g} s"

    if ready > 0:
        desired = min(desired, math.ceil(ready * config.max_scale_up_rate))
        desired = max(desired, math.floor(ready / config.max_scale_down_rate))

    if demand > 0:
        desired = max(desired, 1)  # activation: a waiting request needs a replica now
    if desired == 0 and (ready > 0 or state.desired > 0):
        quiet_for = now - last_active if last_active is not None else math.inf
        if quiet_for < config.scale_to_zero_grace_s:
            desired = 1
            reason = f"idle {quiet_for:.0f} s of {config.scale_to_zero_grace_s:g} s grace"
        else:
            mode = "idle"
            reason = f"idle for {quiet_for:.0f} s: scale to zero"

    desired = max(config.min_replicas, min(config.max_replicas, desired))
    if desired == 0:
        mode = "idle"
    decision = Decision(desired=desired, mode=mode, stable_average=stable, panic_average=panic, reason=reason)
    new_state = replace(state, samples=samples, desired=desired, panic_until=panic_until, last_active=last_active)
    return decision, new_state
