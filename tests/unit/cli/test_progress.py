"""llmserve/progress.py: what `llmserve up` says while pulls, replica starts and the warm pool are under way."""

from __future__ import annotations

from typing import Any

from llmserve.progress import StartupProgress


def status(*, pulling: bool = False, replica: str | None = None, pool: list[str] | None = None) -> dict[str, Any]:
    replicas = [{"id": "chat-0", "state": replica}] if replica else []
    return {
        "services": [{"name": "chat", "revisions": [{"model_dir": None if pulling else "/m", "pull_error": None}],
                      "replicas": replicas}],
        "backend": {"warm_pool": {"size": len(pool), "processes": [{"state": s} for s in pool]} if pool else None},
    }  # fmt: skip


def test_a_step_still_under_way_is_said_every_interval_until_it_ends() -> None:
    progress = StartupProgress(every_s=10)
    assert progress.lines(status(pulling=True), 0.0) == []  # the controller logs that it began
    assert progress.lines(status(pulling=True), 5.0) == []
    assert progress.lines(status(pulling=True), 12.0) == ["chat: pulling the model (12 s so far)…"]
    assert progress.lines(status(pulling=True), 15.0) == []
    assert progress.lines(status(replica="starting"), 16.0) == []
    assert progress.lines(status(replica="starting"), 30.0) == ["chat: replica chat-0 starting (14 s so far)…"]
    assert progress.lines(status(replica="ready"), 31.0) == []  # the controller logs how long it took
    assert progress.lines(status(replica="starting"), 40.0) == []  # a restart starts counting again
    assert progress.lines(status(replica="starting"), 50.0) == ["chat: replica chat-0 starting (10 s so far)…"]


def test_a_failed_pull_is_not_reported_as_pulling() -> None:
    failed = status(pulling=True)
    failed["services"][0]["revisions"][0]["pull_error"] = "not found"
    assert StartupProgress().lines(failed, 0.0) == []


def test_the_warm_pool_is_reported_when_its_readiness_changes() -> None:
    progress = StartupProgress()
    assert progress.lines(status(pool=["starting", "starting"]), 0.0) == [
        "warm pool: 0/2 processes ready, 2 importing vLLM…"
    ]
    assert progress.lines(status(pool=["starting", "starting"]), 20.0) == []
    one_ready = ["warm pool: 1/2 processes ready, 1 importing vLLM…"]
    assert progress.lines(status(pool=["idle", "starting"]), 21.0) == one_ready
    assert progress.lines(status(pool=["idle", "idle"]), 22.0) == ["warm pool: 2/2 processes ready"]
