"""How a replica process is launched: a WorkerPlan says what to run; a controller backend runs it."""

from llmserve.workers.plan import WorkerPlan

__all__ = ["WorkerPlan"]
