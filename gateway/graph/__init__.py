"""InferenceGraphs in the data plane: a pure interpreter of KServe's graph semantics (interpreter.py) over an
injected step caller (steps.py), with streaming; an HTTP step caller that calls URLs directly (http_caller.py);
and the ASGI handler that serves one graph's answers to clients (asgi.py)."""

from gateway.graph.interpreter import GraphRouter, no_route_matched
from gateway.graph.settings import GraphRouterSettings
from gateway.graph.steps import StepAnswer, StepCaller, StepTarget

__all__ = ["GraphRouter", "GraphRouterSettings", "StepAnswer", "StepCaller", "StepTarget", "no_route_matched"]
