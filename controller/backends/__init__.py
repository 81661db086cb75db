"""Where replicas run: local processes (default), Ray actors, Kubernetes objects."""

from controller.backends.base import Backend, ReplicaProcess

__all__ = ["Backend", "ReplicaProcess"]
