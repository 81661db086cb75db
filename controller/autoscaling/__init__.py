"""Autoscaling: a pure KPA-style policy, and the loop that feeds it the gateway's demand."""

from controller.autoscaling.policy import AutoscalingConfig, Decision, PolicyState, decide

__all__ = ["AutoscalingConfig", "Decision", "PolicyState", "decide"]
