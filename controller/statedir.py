"""The controller's state directory: what a restarted controller needs to carry on where the last one stopped.

    <state-dir>/services.json        the declared services with their revisions (what `apply` and `delete` changed)
    <state-dir>/graphs.json          the applied InferenceGraphs (written after services.json: a graph only ever
                                     names services saved before it)
    <state-dir>/replicas/<id>.json   one record per replica that outlives the controller: its service, revision,
                                     the hash of the revision's worker template, and the backend's handle (pid, url...)
    <state-dir>/leases/<id>.lease    renewed by the controller that owns the replica (controller/backends/local.py)
    <state-dir>/control-token        the control API's bearer token when none was given (mode 0600)

Files are replaced atomically (write, fsync, rename), so a controller killed mid-write leaves the previous version.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ReplicaEntry:
    replica_id: str
    service: str
    revision: str
    template: str
    handle: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"replica_id": self.replica_id, "service": self.service, "revision": self.revision,
                "template": self.template, "handle": self.handle}  # fmt: skip


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.replicas_dir = path / "replicas"
        self.leases_dir = path / "leases"
        self.replicas_dir.mkdir(parents=True, exist_ok=True)
        self.leases_dir.mkdir(parents=True, exist_ok=True)

    # -- services ----------------------------------------------------------------------------------------------------
    def load_services(self) -> list[dict[str, Any]]:
        """The saved services (each: spec, generation, revisions, serving), [] when none were saved."""
        data = _read_json(self.path / "services.json")
        services = data.get("services") if isinstance(data, dict) else None
        return [s for s in services if isinstance(s, dict)] if isinstance(services, list) else []

    def save_services(self, services: list[dict[str, Any]]) -> None:
        _write_json(self.path / "services.json", {"version": 1, "services": services})

    # -- graphs ------------------------------------------------------------------------------------------------------
    def load_graphs(self) -> list[dict[str, Any]]:
        """The saved InferenceGraphs (as applied), [] when none were saved."""
        data = _read_json(self.path / "graphs.json")
        graphs = data.get("graphs") if isinstance(data, dict) else None
        return [g for g in graphs if isinstance(g, dict)] if isinstance(graphs, list) else []

    def save_graphs(self, graphs: list[dict[str, Any]]) -> None:
        _write_json(self.path / "graphs.json", {"version": 1, "graphs": graphs})

    # -- replicas ----------------------------------------------------------------------------------------------------
    def replicas(self) -> list[ReplicaEntry]:
        entries = []
        for path in sorted(self.replicas_dir.glob("*.json")):
            data = _read_json(path)
            try:
                entries.append(
                    ReplicaEntry(
                        str(data["replica_id"]),
                        str(data["service"]),
                        str(data["revision"]),
                        str(data["template"]),
                        dict(data["handle"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                path.unlink(missing_ok=True)  # unreadable: nothing can be adopted from it
        return entries

    def record_replica(self, entry: ReplicaEntry) -> None:
        _write_json(self.replicas_dir / f"{entry.replica_id}.json", entry.as_dict())

    def forget_replica(self, replica_id: str) -> None:
        (self.replicas_dir / f"{replica_id}.json").unlink(missing_ok=True)
        (self.leases_dir / f"{replica_id}.lease").unlink(missing_ok=True)

    # -- token -------------------------------------------------------------------------------------------------------
    def token(self) -> str:
        """The control token kept here, made (random, mode 0600) the first time."""
        path = self.path / "control-token"
        with contextlib.suppress(FileNotFoundError):
            existing = path.read_text().strip()
            if existing:
                return existing
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        return token


def read_token(state_dir: Path) -> str | None:
    """The control token a controller with this state dir uses, if it made one (for the CLI and gateways)."""
    try:
        return (state_dir / "control-token").read_text().strip() or None
    except OSError:
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
