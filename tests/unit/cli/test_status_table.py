"""llmserve/status_table.py: the status dict as `llmserve status` prints it."""

from __future__ import annotations

from typing import Any

from llmserve.status_table import render_status


def status() -> dict[str, Any]:
    return {
        "services": [
            {"name": "chat", "model": "smollm2", "runtime": "vllm", "min_replicas": 0, "max_replicas": 2,
             "desired_replicas": 2, "ready_replicas": 1, "pull_error": None,
             "autoscaler": {"mode": "panic", "desired": 2, "reason": "panic: 9.0 in 6 s"},
             "revisions": [{"name": "chat-r1", "traffic_percent": 90, "ready_replicas": 1},
                           {"name": "chat-r2", "traffic_percent": 10, "ready_replicas": 0}],
             "replicas": [
                 {"id": "chat-0", "state": "ready", "url": "http://127.0.0.1:41000", "pid": 4242, "restarts": 1,
                  "last_exit": "exited with status 1", "revision": "chat-r1",
                  "load": {"in_flight": 3, "running": 3, "waiting": 1, "kv_cache_usage": 0.125}},
                 {"id": "chat-1", "state": "starting", "url": None, "pid": 4300, "restarts": 0, "last_exit": None},
             ]},
            {"name": "iris", "model": "iris", "runtime": "llmserve-v2", "min_replicas": 0, "max_replicas": 1,
             "desired_replicas": 0, "ready_replicas": 0, "pull_error": "storageUri: not found",
             "autoscaler": None, "replicas": []},
        ],
        "activator": {"chat": 4},
        "backend": {"name": "local", "warm_pool": {"size": 2, "processes": [{"state": "idle"}, {"state": "serving"}]}},
    }  # fmt: skip


def test_the_whole_report() -> None:
    assert render_status(status()) == (
        "warm pool: size 2 (1 idle, 1 serving)\n"
        "\n"
        "SERVICE  MODEL    RUNTIME      READY  MIN..MAX  HELD  AUTOSCALER\n"
        "chat     smollm2  vllm         1/2    0..2      4     panic -> 2: panic: 9.0 in 6 s\n"
        "iris     iris     llmserve-v2  0/0    0..1      0     -\n"
        "\n"
        "chat\n"
        "  REVISION  TRAFFIC  READY\n"
        "  chat-r1   90%      1\n"
        "  chat-r2   10%      0\n"
        "  REPLICA  STATE     REVISION  LOAD                                       RESTARTS  PID   URL"
        "                     LAST EXIT\n"
        "  chat-0   ready     chat-r1   3 in flight, 3 running, 1 waiting, KV 12%  1         4242  "
        "http://127.0.0.1:41000  exited with status 1\n"
        "  chat-1   starting  -         -                                          0         4300  -"
        "                       -\n"
        "\n"
        "iris\n"
        "  pull error: storageUri: not found\n"
        "  no replicas\n"
    )


def test_todays_admin_shape_without_the_newer_fields() -> None:
    """GET /admin/v1/services as it is now: no revisions, loads, activator map or pool."""
    body = status()
    for service in body["services"]:
        service.pop("revisions", None)
        for replica in service["replicas"]:
            replica.pop("load", None)
            replica.pop("revision", None)
    body.pop("activator")
    body["backend"]["warm_pool"] = None
    text = render_status(body)
    assert text.startswith("SERVICE  MODEL")
    assert "REVISION  TRAFFIC" not in text
    assert "  chat-0   ready     -         -     1 " in text


def test_no_services() -> None:
    assert render_status({"services": [], "backend": {"name": "local", "warm_pool": None}}) == "no services\n"
