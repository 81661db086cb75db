"""llmserve/replica_logs.py: finding a replica's log, its tail, following it (an injected sleep writes the next
lines, so nothing waits on a clock)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmserve.replica_logs import LogNotFound, ReplicaLog, find_logs, follow, tail


def write(path: Path, text: str, mode: str = "a") -> None:
    with open(path, mode) as f:
        f.write(text)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    for name in ("chat-0", "chat-1", "chat-10", "chat-big-0", "iris-0", "warm-w1"):
        write(tmp_path / f"{name}.log", f"{name} line\n")
    return tmp_path


def names(found: list[ReplicaLog]) -> list[str]:
    return [log.replica for log in found]


def test_by_replica_or_service_from_the_files(logs: Path) -> None:
    assert names(find_logs(logs, "chat-1")) == ["chat-1"]
    assert names(find_logs(logs, "chat")) == ["chat-0", "chat-1", "chat-10"]  # not chat-big's, in index order
    assert names(find_logs(logs, "chat-big")) == ["chat-big-0"]


def test_the_controllers_status_says_which_replicas_a_service_has(logs: Path) -> None:
    status = {"services": [
        {"name": "chat", "replicas": [{"id": "chat-10"}, {"id": "chat-1", "log": str(logs / "warm-w1.log")}]},
        {"name": "iris", "replicas": [{"id": "iris-0"}]},
    ]}  # fmt: skip
    found = find_logs(logs, "chat", status)
    assert [(log.replica, log.path.name) for log in found] == [("chat-10", "chat-10.log"), ("chat-1", "warm-w1.log")]
    assert names(find_logs(logs, "iris-0", status)) == ["iris-0"]
    assert names(find_logs(logs, "chat-0", status)) == ["chat-0"]  # gone from the status: its file still is


def test_unknown_names_say_what_exists(logs: Path, tmp_path: Path) -> None:
    with pytest.raises(LogNotFound, match=r"no log for 'nope' in .*\(logs there: chat-0, chat-1, chat-10"):
        find_logs(logs, "nope")
    with pytest.raises(LogNotFound, match="no logs there"):
        find_logs(tmp_path / "missing", "chat")


def test_tail_reads_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    write(path, "".join(f"line {i}\n" for i in range(50_000)), "w")
    assert tail(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert tail(path, 0) == []
    write(path, "only\n", "w")
    assert tail(path, 100) == ["only"]


def scripted(steps: list[Callable[[], None]]) -> tuple[Callable[[float], None], Callable[[], bool]]:
    """A sleep that runs the next step instead of sleeping, and a stop that is true once all have run."""
    pending = list(steps)
    done: list[bool] = []

    def sleep(_: float) -> None:
        if pending:
            pending.pop(0)()
        else:
            done.append(True)

    return sleep, lambda: bool(done)


def test_follow_from_the_end_with_partial_lines_and_restarts(logs: Path) -> None:
    path = logs / "chat-0.log"
    sleep, stop = scripted([
        lambda: write(path, "starting\nhalf a "),
        lambda: write(path, "line\n"),
        lambda: write(path, "after a restart\n"),  # a restarted replica appends to the same file
    ])  # fmt: skip
    lines = list(follow(find_logs(logs, "chat-0"), stop=stop, sleep=sleep))
    assert lines == ["starting", "half a line", "after a restart"]  # not what was there before


def test_follow_several_replicas_prefixes_lines_and_survives_truncation_and_replacement(logs: Path) -> None:
    first, second = logs / "chat-0.log", logs / "chat-1.log"

    def replace() -> None:
        fresh = logs / "fresh.tmp"
        write(fresh, "new file\n", "w")
        os.replace(fresh, second)

    steps: list[Callable[[], Any]] = [
        lambda: write(first, "a\n"),
        lambda: write(second, "b\n"),
        lambda: write(first, "truncated\n", "w"),
        replace,
    ]
    sleep, stop = scripted(steps)
    lines = list(follow(find_logs(logs, "chat")[:2], stop=stop, sleep=sleep))
    assert lines == ["[chat-0] a", "[chat-1] b", "[chat-0] truncated", "[chat-1] new file"]
