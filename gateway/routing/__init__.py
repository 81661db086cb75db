"""Choosing a replica for a request: filters, weighted scorers and a picker, combined in named profiles.

This package never sends requests; it only decides where they go (and counts what is in flight where).
"""

from gateway.routing.base import Candidate, RouteContext
from gateway.routing.load import LoadBoard
from gateway.routing.profiles import DEFAULT_PROFILE, Profile, RoutingProfileError, load_profiles
from gateway.routing.scheduler import Assignment, Scheduler
from gateway.routing.signals import SignalScraper

__all__ = [
    "DEFAULT_PROFILE",
    "Assignment",
    "Candidate",
    "LoadBoard",
    "Profile",
    "RouteContext",
    "RoutingProfileError",
    "Scheduler",
    "SignalScraper",
    "load_profiles",
]
