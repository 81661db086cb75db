"""Choosing a replica for a request: filters, weighted scorers and a picker, combined in named profiles.

This package never sends requests; it only decides where they go (the load ledger, gateway/ledger.py, counts them).
"""

from gateway.routing.base import Candidate, RouteContext
from gateway.routing.load import EndpointLoad
from gateway.routing.profiles import DEFAULT_PROFILE, Profile, RoutingProfileError, load_profiles
from gateway.routing.scheduler import Scheduler
from gateway.routing.signals import SignalScraper

__all__ = [
    "DEFAULT_PROFILE",
    "Candidate",
    "EndpointLoad",
    "Profile",
    "RouteContext",
    "RoutingProfileError",
    "Scheduler",
    "SignalScraper",
    "load_profiles",
]
