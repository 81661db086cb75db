"""`llmserve logs NAME [-f]`: find a replica's log file (NAME a replica, or a service: all its replicas) and
print its end, or follow it as `tail -f` does (across replica restarts, which append to the same file).

Replicas log to `<log dir>/<replica id>.log` (the local and Ray backends; on Ray, on the replica's machine).
With the controller's status at hand, a replica's `log` field wins and a service's replicas are the ones it lists;
without it (the controller is down), the files of the log dir are matched by name.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


class LogNotFound(LookupError):
    """No log file for a name; the message says where it looked and what exists."""


@dataclass(frozen=True)
class ReplicaLog:
    replica: str
    path: Path


def find_logs(log_dir: Path, name: str, status: Mapping[str, Any] | None = None) -> list[ReplicaLog]:
    """The log(s) of replica `name`, or of every replica of service `name` (in replica order)."""
    found: list[ReplicaLog] = []
    for service in (status or {}).get("services", ()):
        for replica in service.get("replicas", ()):
            if name in (replica.get("id"), service.get("name")):
                path = Path(replica["log"]) if replica.get("log") else log_dir / f"{replica['id']}.log"
                found.append(ReplicaLog(str(replica["id"]), path))
    if not found:
        exact = log_dir / f"{name}.log"
        if exact.is_file():
            found = [ReplicaLog(name, exact)]
        else:
            pattern = re.compile(rf"{re.escape(name)}-(\d+)\.log")
            matches = [(int(m[1]), p) for p in _files(log_dir) if (m := pattern.fullmatch(p.name))]
            found = [ReplicaLog(p.name.removesuffix(".log"), p) for _, p in sorted(matches)]
    found = [log for log in found if log.path.is_file()]
    if not found:
        known = sorted(p.name.removesuffix(".log") for p in _files(log_dir))
        raise LogNotFound(
            f"no log for '{name}' in {log_dir}"
            + (f" (logs there: {', '.join(known)})" if known else " (no logs there: is --log-dir right?)")
        )
    return found


def tail(path: Path, lines: int = 100) -> list[str]:
    """The last `lines` lines of a file, without reading all of a large one."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = position = f.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= lines:
            position = max(0, position - 64 * 1024)
            f.seek(position)
            data = f.read(end - position)
    text = data.decode(errors="replace").splitlines()
    return text[-lines:] if lines > 0 else []


def follow(
    logs: Sequence[ReplicaLog],
    *,
    stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """New lines of every log from their current end, as they are written, prefixed `[replica] ` when there
    are several; a file truncated or replaced is read again from its start. Runs until `stop()` is true."""
    readers = [_Reader(log, prefix=f"[{log.replica}] " if len(logs) > 1 else "") for log in logs]
    for reader in readers:
        reader.open(at_end=True)
    try:
        while not stop():
            got = False
            for reader in readers:
                for line in reader.lines():
                    got = True
                    yield line
            if not got:
                sleep(poll_s)
    finally:
        for reader in readers:
            reader.close()


class _Reader:
    def __init__(self, log: ReplicaLog, prefix: str) -> None:
        self.log = log
        self.prefix = prefix
        self.file: BinaryIO | None = None
        self.inode = 0
        self.partial = b""

    def open(self, at_end: bool) -> None:
        try:
            self.file = open(self.log.path, "rb")  # noqa: SIM115 - kept open while following
        except FileNotFoundError:
            self.file = None
            return
        self.inode = os.fstat(self.file.fileno()).st_ino
        if at_end:
            self.file.seek(0, os.SEEK_END)

    def lines(self) -> Iterator[str]:
        if self.file is None:
            self.open(at_end=False)
            if self.file is None:
                return
        try:
            current = os.stat(self.log.path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_ino != self.inode or current.st_size < self.file.tell()):
            self.close()  # replaced or truncated: start over from the top of the new file
            self.open(at_end=False)
            if self.file is None:
                return
        chunk = self.file.read()
        if not chunk:
            return
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        for line in complete:
            yield self.prefix + line.decode(errors="replace")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.partial = b""


def _files(log_dir: Path) -> list[Path]:
    return [p for p in log_dir.glob("*.log") if p.is_file()] if log_dir.is_dir() else []
