"""Choosing a replica for a request. This package never sends anything; it only decides where."""

from gateway.routing.base import Picker, RouteContext
from gateway.routing.round_robin import RoundRobin

__all__ = ["Picker", "RoundRobin", "RouteContext"]
